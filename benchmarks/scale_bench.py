"""Figure 5 of issue 11: the data stages at 1x, 10x and 100x Fashion-MNIST's size.

Generates valid MNIST-format datasets (60,000 x scale train and 10,000 x scale test images of 28x28
uint8, drawn from the real MNIST t10k images shipped with the tests, gzip level 1) into a local
directory mirror, then runs every data stage through the real Dagster assets, each stage in a fresh
child process: raw_gzip (4 partitions), idx (4), shards (3), and one numpy pass of
``mnist_assets.load`` over the train split. Each child reports its wall time (imports excluded) and its
peak RSS (``VmHWM``, see :func:`peak_rss_mb`; imports included, and the peak after imports is
reported beside it).

Goals: time grows linearly with the size; peak RSS at 100x at most 2x the peak at 1x, every stage.

    python benchmarks/scale_bench.py --scales 1 10 100 --out data/bench [--work /tmp/scale]
        [--stages raw_gzip idx]   (a subset of the stages: raw_gzip needs none before it; idx, shards
                                   and loader need the stages before them in the same run)

Writes ``<out>/scale_bench.json`` and ``<out>/scale_bench.md``. 100x needs about 15 GB of disk.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_T10K = REPO / "mnist_assets_tests" / "data" / "mnist"
TRAIN, TEST = 60_000, 10_000
"""Fashion-MNIST's (and MNIST's) file sizes at 1x."""
DATASET = "scale_mnist"
STAGES = ("raw_gzip", "idx", "shards", "loader")
FILENAMES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}
CHUNK_ROWS = 50_000


def _read_idx_gz(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_idx_gz(path: Path, shape: tuple[int, ...], chunks) -> dict:
    """Stream one IDX gzip file; its catalog entry (payload size and sha256)."""
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    digest, size = hashlib.sha256(header), len(header)
    with gzip.open(path, "wb", compresslevel=1) as sink:
        sink.write(header)
        for chunk in chunks:
            data = np.ascontiguousarray(chunk, dtype=np.uint8).reshape(-1).data
            sink.write(data)
            digest.update(data)
            size += len(data)
    return {"filename": path.name, "payload_size": size, "payload_sha256": digest.hexdigest()}


def generate(directory: Path, scale: float, seed: int = 0) -> dict:
    """A directory mirror of a ``scale`` x Fashion-MNIST-sized dataset; returns its catalog document.

    Images are real MNIST t10k digits drawn at random (so the files compress like real ones), labels
    the drawn digits' labels; generated in chunks of 50,000 rows, so memory stays small at any scale.
    """
    directory.mkdir(parents=True, exist_ok=True)
    images = _read_idx_gz(REAL_T10K / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx_gz(REAL_T10K / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, count in (("train", round(TRAIN * scale)), ("test", round(TEST * scale))):
        picks = [
            rng.integers(0, len(labels), min(CHUNK_ROWS, count - start))
            for start in range(0, count, CHUNK_ROWS)
        ]
        files[f"{prefix}-images"] = _write_idx_gz(
            directory / FILENAMES[f"{prefix}-images"], (count, 28, 28), (images[p] for p in picks)
        )
        files[f"{prefix}-labels"] = _write_idx_gz(
            directory / FILENAMES[f"{prefix}-labels"], (count,), (labels[p] for p in picks)
        )
    return {
        "datasets": {
            DATASET: {
                "title": f"{scale}x Fashion-MNIST's size, drawn from MNIST t10k",
                "mirrors": [str(directory)],
                "files": files,
                "class_names": [str(d) for d in range(10)],
            }
        }
    }


def peak_rss_mb() -> float:
    """This process's peak resident set, in MB: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    ``ru_maxrss`` alone would not do in a child: Linux carries the parent's high-water mark across
    fork and exec into it, so a child of a large process (a pytest worker that loaded TensorFlow)
    would report the parent's peak. ``VmHWM`` belongs to the memory map that exec creates.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_stages(document: dict, storage: str, stages) -> dict:
    """``stages`` in this process, in order, through the real assets: each stage's seconds and rows
    (row counts from its materializations; examples read for the loader), and the process's peak RSS."""
    import dagster as dg

    from mnist_assets import load, shards
    from mnist_assets.assets import dataset_assets
    from mnist_assets.catalog import FILE_KEYS, parse_catalog
    from mnist_assets.rebuild.judgement import JUDGEMENT
    from mnist_assets.storage.io_managers import io_managers

    after_imports = peak_rss_mb()
    assets = dataset_assets(parse_catalog(document)[DATASET], JUDGEMENT)
    resources = io_managers(storage)
    measured = {}
    for stage in stages:
        started, rows = time.perf_counter(), 0
        if stage == "loader":
            for _, labels in load(DATASET, "train", batch_size=256, seed=1, storage=storage):
                rows += len(labels)
        else:
            with dg.instance_for_test() as instance:
                for partition in shards.SPLITS if stage == "shards" else FILE_KEYS:
                    result = dg.materialize(
                        assets,
                        selection=[dg.AssetKey([DATASET, stage])],
                        partition_key=partition,
                        instance=instance,
                        resources=resources,
                    )
                    assert result.success, f"{stage}[{partition}] failed"
                    (materialization,) = result.asset_materializations_for_node(f"{DATASET}__{stage}")
                    count = materialization.metadata.get("dagster/row_count")
                    rows += int(count.value) if count is not None else 0
        measured[stage] = {"seconds": round(time.perf_counter() - started, 2), "rows": rows}
    return {
        "stages": measured,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": after_imports,
    }


def stage_in_child(catalog: Path, storage: Path, stage: str) -> dict:
    """One stage in a fresh process: its seconds, rows, peak RSS and RSS after imports."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--catalog", str(catalog), "--storage", str(storage)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return {**result.pop("stages")[stage], **result}


def measure(work: Path, scale: float, stages=STAGES) -> dict:
    """Generate the ``scale`` dataset under ``work`` and run ``stages`` on it, each in a child."""
    started = time.perf_counter()
    document = generate(work / "mirror", scale)
    generated = time.perf_counter() - started
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps(document))
    results = {stage: stage_in_child(catalog, work / "artifacts", stage) for stage in stages}
    payload = sum(f["payload_size"] for f in document["datasets"][DATASET]["files"].values())
    gz = sum(p.stat().st_size for p in (work / "mirror").iterdir())
    return {
        "scale": scale,
        "payload_bytes": payload,
        "gzip_bytes": gz,
        "generate_seconds": round(generated, 2),
        "stages": results,
    }


def _report(results: list[dict]) -> list[str]:
    base = results[0]
    lines = [
        f"Figure 5, scale: wall seconds and peak RSS (MB) of each data stage, each stage a fresh process "
        f"(RSS after imports about {next(iter(base['stages'].values()))['rss_after_imports_mb']:.0f} MB).",
        "",
        "| scale | payload | stage | seconds | s / 1x-s | peak RSS MB | peak / 1x peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for stage, measured in result["stages"].items():
            first = base["stages"][stage]
            time_ratio = measured["seconds"] / max(first["seconds"], 1e-9)
            rss_ratio = measured["peak_rss_mb"] / first["peak_rss_mb"]
            lines.append(
                f"| {result['scale']:g}x | {result['payload_bytes'] / 1e9:.2f} GB | {stage} | "
                f"{measured['seconds']:.2f} | {time_ratio:.1f} | {measured['peak_rss_mb']:.0f} | "
                f"{rss_ratio:.2f} |"
            )
    top = results[-1]
    worst = max(top["stages"][s]["peak_rss_mb"] / base["stages"][s]["peak_rss_mb"] for s in top["stages"])
    lines += [
        "",
        f"Goal: peak RSS at the largest scale ({top['scale']:g}x) at most 2x the 1x peak for every stage: "
        f"{'met' if worst <= 2 else 'NOT met'} (worst {worst:.2f}x). Time should grow linearly "
        f"(the s / 1x-s column against the scale).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100])
    parser.add_argument("--stages", choices=STAGES, nargs="+", default=list(STAGES), help="in this order")
    parser.add_argument("--out", type=Path, default=Path("data/bench"))
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--child", choices=STAGES, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))  # this checkout's package, not whichever one the venv installed
        print(json.dumps(run_stages(json.loads(args.catalog.read_text()), args.storage, args.child)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import report

    scratch = args.work or Path(tempfile.mkdtemp(prefix="scale_bench."))
    results = []
    try:
        for scale in args.scales:
            work = scratch / f"{scale:g}x"
            shutil.rmtree(work, ignore_errors=True)
            results.append(measure(work, scale, args.stages))
            shutil.rmtree(work, ignore_errors=True)
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "scales": results,
    }
    report.write(args.out, "scale_bench", result, _report(results))


if __name__ == "__main__":
    main()
