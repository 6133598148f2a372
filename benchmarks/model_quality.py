"""Model quality (issue 14, part 5): every training configuration a dataset lists, trained as users train it.

Each dataset runs the real ``mnist-assets prepare DATASET`` in a scratch DAGSTER_HOME and storage, then
reads every checkpoint materialization from that instance's event log: parameters, training seconds,
test (validation) and holdout accuracy per configuration. Reading the event log, not the storage
layout, keeps this working however checkpoints are partitioned or versioned.

Goal: a Fashion-MNIST configuration reaching holdout accuracy >= 0.925 in <= 300 s of training on this
machine's 2 cores. The load average is recorded before and after each dataset, because other work on
the machine slows training (the seconds are then pessimistic). MNIST needs its files: the catalog's
mirrors are on the internet, ``MNIST_ASSETS_MIRROR_MNIST`` points elsewhere; when no mirror answers,
the report says which files, which URLs were tried and what to set, and the other datasets still run.

Writes ``<out>/model_quality.json`` and ``<out>/model_quality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import report

from mnist_assets.catalog import Dataset, load_catalog

ROOT = Path(__file__).resolve().parents[1]
GOAL = {"dataset": "fashion_mnist", "holdout_accuracy": 0.925, "training_seconds": 300.0}
COLUMNS = ("parameter_count", "training_seconds", "epochs", "test_accuracy", "holdout_accuracy")


def configurations(dataset: Dataset) -> dict[str, dict]:
    """Each configuration's settings, by name, as the checkpoint partitions are named."""
    from mnist_assets.models import training_configs

    return {name: config.model_dump() for name, config in training_configs(dataset).items()}


def prepare(dataset: Dataset, scratch: Path, catalog: Path | None) -> dict:
    """Run ``mnist-assets prepare`` on an empty instance and storage; its JSON document."""
    home = scratch / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MNIST_ASSETS_STORAGE": str(scratch / "artifacts")}
    if catalog is not None:
        env["MNIST_ASSETS_CATALOG"] = str(catalog.resolve())
    argv = [sys.executable, "-m", "mnist_assets.cli", "prepare", dataset.id]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        stderr = done.stderr[-3000:]
        raise SystemExit(f"{dataset.id}: `mnist-assets prepare` printed no report:\n{stderr}") from None


def checkpoint_results(home: Path, dataset_id: str) -> dict[str, dict]:
    """The latest checkpoint materialization's figures per partition (``default`` when unpartitioned)."""
    results: dict[str, dict] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey([dataset_id, "checkpoint"]), limit=1000).records
        for record in records:  # newest first
            materialization = record.asset_materialization
            assert materialization is not None, "fetch_materializations returns materialization events"
            metadata = {k: v.value for k, v in materialization.metadata.items() if k in COLUMNS}
            results.setdefault(materialization.partition or "default", metadata)
    return results


def unreachable(dataset: Dataset, document: dict) -> str | None:
    """What to tell the reader when source files could not be fetched (None if all were)."""
    fetching = {f"{dataset.id}/urls", f"{dataset.id}/raw_gzip"}
    failed = sorted({f["partition"] for f in document["failed"] if f["asset"] in fetching})
    if not failed:
        return None
    mirrors = dataset.resolve_mirrors()
    names = ", ".join(f"{key} ({dataset.file(key).filename})" for key in failed)
    example = dataset.file_urls(mirrors)[failed[0]][0]
    return (
        f"{dataset.id}: not measured: could not fetch {names} from any mirror; tried each file name under "
        f"{', '.join(mirrors)} (e.g. {example}). Set {dataset.mirror_env_var} to a directory or base URL "
        "holding the four files (comma-separated for several), or run where the catalog's mirrors are "
        "reachable."
    )


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def measure(dataset: Dataset, catalog: Path | None) -> dict:
    """One dataset: its configurations' figures, or why they could not be measured."""
    result: dict = {"dataset": dataset.id, "load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix=f"model-quality-{dataset.id}-") as name:
        scratch = Path(name)
        document = prepare(dataset, scratch, catalog)
        result["load_after"] = load_average()
        result["unreachable"] = unreachable(dataset, document)
        result["failed"] = [
            f"{f['asset']}[{f['partition']}]: {f['error'].splitlines()[0]}" for f in document["failed"]
        ]
        figures = checkpoint_results(scratch / "home", dataset.id)
    settings = configurations(dataset)
    result["configurations"] = {
        name: {**figures.get(name, {}), "settings": settings.get(name, {})}
        for name in settings.keys() | figures.keys()
    }
    return result


def changed(settings: dict) -> str:
    """The settings that differ from TrainConfig's defaults, short enough for a table cell."""
    from mnist_assets.assets import TrainConfig

    defaults = TrainConfig().model_dump()
    shown = [f"{k}={v}" for k, v in settings.items() if defaults.get(k) != v and k != "accuracy_floor"]
    return ", ".join(shown) or "TrainConfig defaults"


def meets_goal(figures: dict) -> bool:
    return (
        figures.get("holdout_accuracy", 0) >= GOAL["holdout_accuracy"]
        and figures.get("training_seconds", float("inf")) <= GOAL["training_seconds"]
    )


def goal_line(results: list[dict]) -> str:
    fashion = next((r for r in results if r["dataset"] == GOAL["dataset"]), None)
    if fashion is None:
        return f"goal not measured: run with --dataset {GOAL['dataset']}"
    winners = [name for name, figures in fashion["configurations"].items() if meets_goal(figures)]
    target = f"holdout >= {GOAL['holdout_accuracy']} in <= {GOAL['training_seconds']:.0f} s of training"
    return f"goal ({target}): " + (f"met by {', '.join(sorted(winners))}" if winners else "NOT met")


def lines(results: list[dict], catalog: Path | None) -> list[str]:
    out = [
        f"Model quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs "
        "(`make bench-models`; seconds are training only, on a machine others may share: see the load).",
        *([f"Configurations from the catalog {catalog}, not the packaged one."] if catalog else []),
        "",
        "| dataset | configuration | parameters | training s | epochs | test acc | holdout acc "
        "| load 1/5/15 min | settings |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for result in results:
        load = " → ".join("/".join(f"{x:.2f}" for x in result[k]) for k in ("load_before", "load_after"))
        for name, f in sorted(result["configurations"].items()):
            settings = changed(f["settings"])
            if "holdout_accuracy" not in f:
                out.append(f"| {result['dataset']} | {name} | not trained | | | | | {load} | {settings} |")
                continue
            out.append(
                f"| {result['dataset']} | {name} | {f['parameter_count']:,} | {f['training_seconds']:.1f} | "
                f"{f['epochs']} | {f['test_accuracy']:.4f} | {f['holdout_accuracy']:.4f} | {load} "
                f"| {settings} |"
            )
        notes += [result["unreachable"]] if result["unreachable"] else result["failed"]
    out += ["", goal_line(results), *(f"\n{note}" for note in notes)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="dataset id, repeatable (default: fashion_mnist)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--catalog",
        type=Path,
        help="a catalog file to use instead of the packaged one (to try configurations)",
    )
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    unknown = [d for d in args.dataset or [] if d not in catalog]
    if unknown:
        raise SystemExit(f"unknown dataset {unknown[0]!r}; the catalog lists {', '.join(catalog)}")
    results = [measure(catalog[d], args.catalog) for d in args.dataset or [GOAL["dataset"]]]
    document = {"goal": GOAL, "catalog": str(args.catalog or "packaged"), "results": results}
    report.write(args.out, "model_quality", document, lines(results, args.catalog))


if __name__ == "__main__":
    main()
