"""TensorFlow Datasets' Fashion-MNIST ``download_and_prepare`` from the bench's loopback mirror (issue 23).

    python benchmarks/tfds_peer.py --mirror http://127.0.0.1:PORT/ --served DIR --out SCRATCH

The peer of a cold ingest: TFDS downloads the four files, checks each against its registered size and
sha256, parses the IDX payloads and writes its own shards (TFRecord) with the dataset info. TFDS registers
the checksums of the files at Zalando's URL; Debian's files are re-gzipped (the same payloads, other gzip
bytes), so this script registers what the mirror serves (the sizes and sha256 of the files in ``--served``)
for the mirror's URLs, in a checksums dir of its own, and points the builder's URL at the mirror. Nothing
leaves the machine: no prepared copy is fetched from TFDS's bucket. Prints JSON: seconds inside the
process (import, prepare) and what was written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def register_served_checksums(mirror: str, served: Path, checksums_dir: Path) -> None:
    """One TFDS checksums file (url, size, sha256, filename per line) for the mirror's copies; TFDS reads
    every ``*.txt`` of a registered dir, keyed by URL, so these stand beside the builder's own."""
    checksums_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in FILES:
        data = (served / name).read_bytes()
        lines.append(f"{mirror}{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\t{name}")
    (checksums_dir / "fashion_mnist_loopback_mirror.txt").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True, help="base URL ending in /")
    parser.add_argument("--served", type=Path, required=True, help="the directory the mirror serves")
    parser.add_argument("--out", type=Path, required=True, help="scratch: checksums, downloads, data_dir")
    args = parser.parse_args()
    seconds = {}
    started = time.perf_counter()
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist

    seconds["import_tfds"] = time.perf_counter() - started
    register_served_checksums(args.mirror, args.served, args.out / "checksums")
    tfds.download.add_checksums_dir(str(args.out / "checksums"))
    mnist.FashionMNIST.URL = args.mirror  # the builder joins each filename onto URL
    step = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; stdout is for the JSON
        builder = tfds.builder("fashion_mnist", data_dir=str(args.out / "data"))
        config = tfds.download.DownloadConfig(try_download_gcs=False, force_checksums_validation=True)
        builder.download_and_prepare(download_dir=str(args.out / "downloads"), download_config=config)
    seconds["download_and_prepare"] = time.perf_counter() - step
    seconds["total_in_process"] = time.perf_counter() - started
    written = [p for p in (args.out / "data").rglob("*") if p.is_file()]
    print(
        json.dumps(
            {
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
                "files_written": len(written),
                "bytes_written": sum(p.stat().st_size for p in written),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
