"""The DVC peer of figure 7 (issue 23): a 5-stage ``dvc.yaml`` over the four Fashion-MNIST files.

``write(root, served, python)`` lays out a DVC project (``dvc init --no-scm``) whose stages are small
plain-Python scripts written beside it, each run by ``python`` (an interpreter with numpy):

    fetch   the four gzip files, copied from ``served`` (the directory the loopback mirror serves)
    parse   gunzip and parse each IDX payload to a ``.npy`` array
    split   the seeded train/test cut of the official train file; holdout is the official test file
    shards  every split in 10,000-row ``.npy`` shards (images and labels)
    summary rows and examples per class of every split, as a metrics file

so ``dvc repro`` does the same kind of work, stage by stage, as the project's graph (download, idx,
shards), and a second ``dvc repro`` is DVC's no-op: it checks every stage's dependencies and outputs
against ``dvc.lock`` and runs nothing. The four source files are dependencies by their absolute paths
(DVC hashes them once and then trusts their size and mtime, as it does every file it tracks).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

STAGES = {
    "fetch.py": """
import shutil, sys
from pathlib import Path

served, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(exist_ok=True)
for name in sys.argv[3:]:
    shutil.copyfile(served / name, out / name)
""",
    "parse.py": """
import gzip, sys
from pathlib import Path
import numpy as np

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(exist_ok=True)
for path in sorted(raw.glob("*.gz")):
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
    np.save(out / (path.name.split("-")[0] + "-" + path.name.split("-")[1] + ".npy"), array)
""",
    "split.py": """
import sys
from pathlib import Path
import numpy as np

arrays, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(exist_ok=True)
images, labels = np.load(arrays / "train-images.npy"), np.load(arrays / "train-labels.npy")
order = np.random.default_rng(0).permutation(len(labels))
cut = round(len(labels) * 0.1)
parts = {"test": order[:cut], "train": order[cut:]}
for split, rows in parts.items():
    np.save(out / f"{split}-images.npy", images[rows])
    np.save(out / f"{split}-labels.npy", labels[rows])
np.save(out / "holdout-images.npy", np.load(arrays / "t10k-images.npy"))
np.save(out / "holdout-labels.npy", np.load(arrays / "t10k-labels.npy"))
""",
    "shards.py": """
import sys
from pathlib import Path
import numpy as np

split_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
for split in ("train", "test", "holdout"):
    images = np.load(split_dir / f"{split}-images.npy")
    labels = np.load(split_dir / f"{split}-labels.npy")
    (out / split).mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(labels), 10_000)):
        np.savez(out / split / f"{number:05d}.npz", images=images[start : start + 10_000],
                 labels=labels[start : start + 10_000])
""",
    "summary.py": """
import json, sys
from pathlib import Path
import numpy as np

shards, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for split in ("train", "test", "holdout"):
    labels = np.concatenate([np.load(p)["labels"] for p in sorted((shards / split).glob("*.npz"))])
    summary[split] = {"rows": int(len(labels)), "per_class": np.bincount(labels, minlength=10).tolist()}
out.write_text(json.dumps(summary, indent=2))
""",
}


def dvc_yaml(served: Path, python: str) -> dict:
    def stage(script: str, args: str, deps: list[str], outs: list) -> dict:
        return {"cmd": f"{python} stages/{script} {args}", "deps": [f"stages/{script}", *deps], "outs": outs}

    sources = " ".join(FILES)
    return {
        "stages": {
            "fetch": stage("fetch.py", f"{served} raw {sources}", [str(served / f) for f in FILES], ["raw"]),
            "parse": stage("parse.py", "raw arrays", ["raw"], ["arrays"]),
            "split": stage("split.py", "arrays split", ["arrays"], ["split"]),
            "shards": stage("shards.py", "split shards", ["split"], ["shards"]),
            "summary": {
                **stage("summary.py", "shards summary.json", ["shards"], []),
                "outs": [],
                "metrics": [{"summary.json": {"cache": False}}],
            },
        }
    }


def env() -> dict[str, str]:
    """DVC without its usage analytics (they would start a background process that reports home)."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def write(root: Path, served: Path, python: str, dvc: str) -> None:
    """A DVC project in ``root`` (created) with the five stages; nothing is run yet."""
    (root / "stages").mkdir(parents=True)
    for name, text in STAGES.items():
        (root / "stages" / name).write_text(text.lstrip())
    # dvc.yaml is YAML; JSON is YAML too, so no YAML writer is needed here
    (root / "dvc.yaml").write_text(json.dumps(dvc_yaml(served, python), indent=2) + "\n")
    for argv in (["init", "--no-scm", "--quiet"], ["config", "core.analytics", "false"]):
        subprocess.run([dvc, *argv], cwd=root, env=env(), check=True, capture_output=True, text=True)
