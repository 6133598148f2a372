"""The baseline of figures 1 and 2: the project's work as a plain script, with no orchestrator.

Download the four gzip files over HTTP, parse IDX and check each payload's sha256 against the catalog's
pin, cut the seeded train/test/holdout split, write zstd Parquet shards (``rows_per_shard`` rows each)
with the sha256 of every shard in a manifest, then (unless ``--ingest-only``) train the project's model
(``mnist_assets.training.build_model``) from in-memory arrays, validating on test, evaluate every split
and save the ``.keras`` file with its sha256. Prints one JSON document (seconds per stage, metrics).

    python benchmarks/plain_pipeline.py --mirror http://127.0.0.1:8000/ --out /tmp/plain [--ingest-only]

It imports the project's helpers (``idx``, ``shards.split_order``, ``training.build_model``, and its
``Params`` are ``hyperparameters.Hyperparameters``) but not the
package itself: ``mnist_assets/__init__.py`` loads the Dagster definitions, which this script is the
comparison against, so the package is registered as a bare namespace and only those modules load.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import time
import types
import urllib.request
from pathlib import Path

STARTED = time.perf_counter()


def _bare_package(name: str = "mnist_assets") -> None:
    """Make ``import mnist_assets.x`` load ``x`` without running the package's ``__init__``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (make bench installs it into .venv)")
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package


_bare_package()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mnist_assets import idx  # noqa: E402
from mnist_assets.hyperparameters import Hyperparameters as Params  # noqa: E402
from mnist_assets.shards import ShardOptions, split_order  # noqa: E402

FILES = ("train-images", "train-labels", "test-images", "test-labels")
SPLITS = {"train": "train", "test": "train", "holdout": "test"}  # split -> the official file it is cut from


def ingest(mirror: str, catalog: dict, out: Path, rows_per_shard: int, seconds: dict) -> dict:
    t = time.perf_counter()
    raw = {}
    for key in FILES:
        with urllib.request.urlopen(mirror + catalog["files"][key]["filename"], timeout=60) as response:
            raw[key] = response.read()
    seconds["download"] = time.perf_counter() - t

    t = time.perf_counter()
    arrays = {}
    for key in FILES:
        arrays[key], payload_sha256 = idx.parse_gzip(raw[key])
        if payload_sha256 != catalog["files"][key]["payload_sha256"]:
            raise SystemExit(f"{key}: payload sha256 {payload_sha256} does not match the catalog")
    seconds["parse"] = time.perf_counter() - t

    t = time.perf_counter()
    options = ShardOptions(rows_per_shard=rows_per_shard)
    splits = {}
    for split, source in SPLITS.items():
        images, labels = arrays[f"{source}-images"], arrays[f"{source}-labels"]
        rows = split_order(split, len(labels), options)
        split_images, split_labels = images[rows], labels[rows]
        splits[split] = (split_images, split_labels)
        directory = out / split
        directory.mkdir(parents=True)
        manifest = []
        for number, start in enumerate(range(0, len(rows), rows_per_shard)):
            part = slice(start, start + rows_per_shard)
            count = len(rows[part])
            pixels = np.ascontiguousarray(split_images[part]).reshape(-1)
            table = pa.table(
                {
                    "image": pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(28 * 28), count, [None, pa.py_buffer(pixels)]
                    ),
                    "label": pa.array(split_labels[part]),
                    "source_index": pa.array(rows[part]),
                }
            )
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            data = sink.getvalue().to_pybytes()
            digest = hashlib.sha256(data).hexdigest()
            name = f"part-{number:05d}-{digest[:16]}.parquet"
            (directory / name).write_bytes(data)
            manifest.append({"file": name, "rows": count, "sha256": digest})
        (directory / "_manifest.json").write_text(json.dumps({"split": split, "shards": manifest}))
    seconds["split_and_shards"] = time.perf_counter() - t
    return splits


def train(splits: dict, params: Params, out: Path, seconds: dict) -> dict:
    t = time.perf_counter()
    from mnist_assets import training  # the project's model; it imports TensorFlow quietly

    seconds["import_tensorflow"] = time.perf_counter() - t

    t = time.perf_counter()
    training.keras.utils.set_random_seed(params.seed)
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
    steps = -(-len(train_labels) // params.batch_size)
    model = training.build_model(train_images.shape[1:], 10, params, steps)
    model.fit(
        train_images[..., np.newaxis],
        train_labels.astype(np.int32),
        batch_size=params.batch_size,
        epochs=params.epochs,
        validation_data=(test_images[..., np.newaxis], test_labels.astype(np.int32)),
        shuffle=True,
        verbose=0,
    )
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = {}
    for split, (images, labels) in splits.items():
        loss, accuracy = model.evaluate(
            images[..., np.newaxis], labels.astype(np.int32), batch_size=params.batch_size, verbose=0
        )
        metrics[split] = {"loss": float(loss), "accuracy": float(accuracy)}
    path = out / "model.keras"
    model.save(path)
    metrics["keras_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # type: ignore[assignment]
    seconds["evaluate_and_save"] = time.perf_counter() - t
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True, help="base URL of the dataset's four files")
    parser.add_argument("--out", type=Path, required=True, help="a fresh directory for shards and model")
    parser.add_argument("--catalog", type=Path, default=None, help="catalog JSON (pins and file names)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument(
        "--params",
        default="{}",
        help="Hyperparameters fields as JSON (epochs 1 unless given)",
    )
    parser.add_argument("--ingest-only", action="store_true", help="stop after writing the shards")
    args = parser.parse_args(argv)
    catalog_path = args.catalog or Path(sys.modules["mnist_assets"].__path__[0]) / "catalog.json"
    catalog = json.loads(catalog_path.read_text())["datasets"][args.dataset]
    mirror = args.mirror if args.mirror.endswith("/") else args.mirror + "/"

    seconds: dict[str, float] = {"imports": time.perf_counter() - STARTED}
    splits = ingest(mirror, catalog, args.out, args.rows_per_shard, seconds)
    metrics = None
    if not args.ingest_only:
        params = Params(**{"epochs": 1, **json.loads(args.params)})
        metrics = train(splits, params, args.out, seconds)
    seconds["total_in_process"] = time.perf_counter() - STARTED
    json.dump(
        {
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "rows": {k: len(v[1]) for k, v in splits.items()},
            "metrics": metrics,
            "params": None if args.ingest_only else params.model_dump(),
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
