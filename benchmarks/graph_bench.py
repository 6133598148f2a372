"""Full-size Fashion-MNIST through the whole graph, in-process, with the default training config.

Measures each stage's wall time and the holdout accuracy, beside a plain-script baseline run in the
same process (gunzip + numpy.frombuffer of the same four files), and writes JSON plus a markdown table.
Goal from issue 2: holdout accuracy >= 0.91 in <= 300 s of training on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import report

from mnist_assets.assets import dataset_assets, materialization_steps
from mnist_assets.catalog import load_catalog
from mnist_assets.rebuild.judgement import JUDGEMENT
from mnist_assets.storage.io_managers import io_managers

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def plain_script_ingest(dataset) -> float:
    """The baseline: what a hand-written script does to get arrays, with no checks or storage."""
    started = time.perf_counter()
    for file in dataset.files.values():
        data = gzip.decompress((DEBIAN / file.filename).read_bytes())
        ndim = data[3]
        shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return time.perf_counter() - started


def run(out: Path, epochs: int | None) -> dict:
    dataset = load_catalog()["fashion_mnist"]
    assets = dataset_assets(dataset, JUDGEMENT)
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch, dg.instance_for_test() as instance:
        resources = io_managers(scratch)
        run_config = None
        if epochs is not None:
            run_config = {"ops": {"fashion_mnist__checkpoint": {"config": {"epochs": epochs}}}}
        for names, partition in materialization_steps(dataset):
            started = time.perf_counter()
            dg.materialize(
                assets,
                selection=[dg.AssetKey([dataset.id, n]) for n in names],
                partition_key=partition,
                instance=instance,
                resources=resources,
                run_config=run_config if names == ("checkpoint",) else None,
            )
            stage = "+".join(names)
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - started
        record = json.loads(
            (Path(scratch) / dataset.id / "checkpoint" / "bn_cnn" / "checkpoint.json").read_text()
        )
    baseline = plain_script_ingest(dataset)
    ingest = stages["urls+raw_gzip+idx"] + stages["shards"]
    holdout = record["metrics"]["holdout"]["accuracy"]
    result = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "baseline_plain_ingest_seconds": round(baseline, 2),
        "ingest_vs_plain_ratio": round(ingest / baseline, 2),
        "training_seconds": record["training_seconds"],
        "epochs": record["epochs"],
        "metrics": record["metrics"],
        "parameter_count": record["parameter_count"],
        "goal_met": holdout >= 0.91 and record["training_seconds"] <= 300,
    }
    lines = [
        "| stage | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in result["stage_seconds"].items()),
        f"| plain-script ingest (baseline) | {baseline:.2f} |",
        f"| ingest (urls+raw+idx+shards) / baseline | {result['ingest_vs_plain_ratio']:.2f}x |",
        "",
        (
            f"holdout accuracy {holdout:.4f} after {record['epochs']} epochs, "
            f"{record['training_seconds']:.1f} s of training; goal (>= 0.91 in <= 300 s) "
            f"{'met' if result['goal_met'] else 'NOT met'}"
        ),
    ]
    report.write(out, "graph_bench", result, lines)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench"))
    parser.add_argument("--epochs", type=int, default=None, help="override the default config")
    args = parser.parse_args()
    run(args.out, args.epochs)
