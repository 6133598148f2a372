"""Is training reproducible across processes, and what does TensorFlow's op determinism cost?

Trains the catalog's ``cnn`` configuration (conv 24/48/64 with batch norm, dense 128, batch 256) for
``--epochs`` passes over the first ``--rows`` Fashion-MNIST training images, each training in a process
of its own, alternating ``tf.config.experimental.enable_op_determinism()`` off and on
(:data:`mnist_assets.training.DETERMINISTIC_OPS`), and prints one
JSON document: per run its mode, training seconds, the checkpoint's data version and file sha256; per
mode the median seconds; whether every run of a mode gave the same model.

    python benchmarks/determinism.py [--rows 25600] [--epochs 3] [--repeats 2]

It reads the IDX files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) and
feeds :func:`mnist_assets.training.train` from memory, in the loader's seeded orders, so it needs no
storage and no Dagster instance. Seconds are wall clock on a machine others may share: read them
with the load average it prints.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CNN = {"conv_filters": [24, 48, 64], "dense_units": 128, "batch_size": 256, "learning_rate": 0.002}


class Arrays:
    """A split in memory as :class:`mnist_assets.training.ShardSource`, shuffled as the loader does."""

    def __init__(self, images, labels, batch_size: int, seed: int | None, shard_rows: int = 2048):
        self.images, self.labels, self.seed, self.shard_rows = images, labels, seed, shard_rows
        self.batch_size, self.epochs, self.drop_remainder = batch_size, None, False

    rows = property(lambda self: len(self.labels))
    image_shape = property(lambda self: self.images.shape[1:])
    shard_count = property(lambda self: -(-self.rows // self.shard_rows))

    def shard_order(self, epoch: int) -> np.ndarray:
        if self.seed is None:
            return np.arange(self.shard_count)
        return np.random.default_rng([self.seed, epoch]).permutation(self.shard_count)

    def read_shard(self, epoch: int, number: int):
        part = slice(number * self.shard_rows, (number + 1) * self.shard_rows)
        images, labels = self.images[part], self.labels[part].astype(np.int32)
        if self.seed is None:
            return images, labels
        rows = np.random.default_rng([self.seed, epoch, number]).permutation(len(labels))
        return images[rows], labels[rows]


def read_idx(name: str) -> np.ndarray:
    from mnist_assets import idx

    return idx.parse(gzip.decompress((SOURCE / f"{name}-ubyte.gz").read_bytes()))


def train_once(rows: int, epochs: int, deterministic: bool) -> dict:
    from mnist_assets import model_file, models, training
    from mnist_assets.hashing import sha256

    training.DETERMINISTIC_OPS = deterministic
    config = models.TrainConfig(**CNN, epochs=epochs)
    images, labels = read_idx("train-images-idx3"), read_idx("train-labels-idx1")
    test_images, test_labels = read_idx("t10k-images-idx3"), read_idx("t10k-labels-idx1")
    splits = {
        "train": Arrays(images[:rows], labels[:rows], config.batch_size, config.seed),
        "test": Arrays(test_images[:5000], test_labels[:5000], config.batch_size, None),
        "holdout": Arrays(test_images[5000:], test_labels[5000:], config.batch_size, None),
    }
    trained = training.train(splits, 10, config)
    return {
        "deterministic": deterministic,
        "training_seconds": trained.record["training_seconds"],
        "steps": epochs * -(-rows // config.batch_size),
        "data_version": model_file.data_version(trained.keras_bytes),
        "sha256": sha256(trained.keras_bytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=25_600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=("off", "on"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_once(args.rows, args.epochs, args.worker == "on")))
        return
    runs = []
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            command = [sys.executable, __file__, "--rows", str(args.rows), "--epochs", str(args.epochs)]
            done = subprocess.run([*command, "--worker", mode], capture_output=True, text=True, check=True)
            runs.append({**json.loads(done.stdout.splitlines()[-1]), "load_average": os.getloadavg()[0]})
            print(json.dumps(runs[-1]), file=sys.stderr)
    summary = {}
    for mode in (False, True):
        mine = [run for run in runs if run["deterministic"] == mode]
        summary["on" if mode else "off"] = {
            "median_seconds": statistics.median(run["training_seconds"] for run in mine),
            "same_model_every_run": len({(run["data_version"], run["sha256"]) for run in mine}) == 1,
        }
    summary["same_model_both_modes"] = len({run["data_version"] for run in runs}) == 1
    print(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
