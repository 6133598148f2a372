"""Train/test/holdout splits as Parquet shard sets.

holdout is the official test file; test (validation) is a seeded fraction of the official train file;
train is the rest; both are stored in seeded random order (:func:`split_order`). Each row keeps its
``source_index`` so it traces back to the IDX file. Images are
stored as 784 raw bytes (``fixed_size_binary``), which DuckDB, polars and pandas read unaided.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mnist_assets import idx
from mnist_assets.hashing import sha256
from mnist_assets.manifest import CODECS, SPLITS, Codec, Column, Manifest, ShardEntry, Split

SPLIT_SOURCES: dict[Split, tuple[str, str]] = {
    "train": ("train-images", "train-labels"),
    "test": ("train-images", "train-labels"),
    "holdout": ("test-images", "test-labels"),
}
"""Which (images, labels) files each split is cut from."""

COLUMNS = (
    Column(name="image", type="fixed_size_binary", description="row-major uint8 pixels"),
    Column(name="label", type="uint8", description="class index into class_names"),
    Column(name="source_index", type="uint32", description="row in the source IDX file"),
)
COMPRESSIONS = CODECS
READ_AHEAD = 2
"""Shards a reader (:mod:`mnist_assets.loader`, and training's tf.data pipeline over it) reads and
decodes ahead of the one being batched: a few shards in memory, whatever the split's size."""


@dataclass(frozen=True)
class ShardOptions:
    seed: int = 20261122
    validation_fraction: float = 0.1
    rows_per_shard: int = 10_000
    compression: Codec = "zstd"

    def __post_init__(self):
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction is {self.validation_fraction}, "
                "expected a share between 0 and 1 (exclusive)"
            )
        if self.rows_per_shard < 1:
            raise ValueError(
                f"rows_per_shard is {self.rows_per_shard}, expected a whole number of at least 1"
            )
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"compression is {self.compression!r}, expected one of {', '.join(COMPRESSIONS)}"
            )


@dataclass(frozen=True)
class EncodedShardSet:
    """A shard set in memory: the manifest plus the bytes of every file it lists."""

    manifest: Manifest
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class ShardSet:
    """A stored shard set, read back and verified."""

    manifest: Manifest
    table: pa.Table

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return to_numpy(self.table, self.manifest.image_shape)


def split_order(split: str, source_rows: int, options: ShardOptions) -> np.ndarray:
    """The source rows of a split in the order they are stored.

    train and test are the two parts of one permutation of the official train file seeded by the
    shard seed (its first ``validation_fraction`` is test), kept in that permuted order: every shard
    is then a uniform sample of its split whatever order the file was published in (many are sorted
    by class), so even an unshuffled read gives mixed batches. holdout is the official test file row
    for row, in its own order: it is only evaluated, and stays comparable with published results."""
    if split == "holdout":
        return np.arange(source_rows, dtype=np.uint32)
    permutation = np.random.default_rng(options.seed).permutation(source_rows)
    n_test = round(source_rows * options.validation_fraction)
    return (permutation[:n_test] if split == "test" else permutation[n_test:]).astype(np.uint32)


def split_rows(split: str, source_rows: int, options: ShardOptions) -> np.ndarray:
    """The source rows of a split, sorted (what the split's checks compare the stored rows with)."""
    rows = split_order(split, source_rows, options)
    rows.sort()  # in place, as uint32: a 100x split is 5.4M rows
    return rows


GATHER_BLOCK = 1024
"""Rows gathered between two releases of a memory-mapped file's pages (see :func:`gather`)."""


def gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``, read in ascending row order and put back in the order asked for: a
    memory-mapped file is then read forward (the kernel's read-ahead serves it), not in the order of
    a permutation that jumps across the whole file. A shuffled shard's rows lie all over the file and
    each one read maps its neighbours too (read-ahead, fault-around), so the pages are released every
    :data:`GATHER_BLOCK` rows: resident memory stays a block's worth, not the file's."""
    ascending = np.argsort(rows, kind="stable")
    taken = np.empty((len(rows), *array.shape[1:]), array.dtype)
    for start in range(0, len(rows), GATHER_BLOCK):
        block = ascending[start : start + GATHER_BLOCK]
        taken[block] = array[rows[block]]
        idx.release_pages(array)
    return taken


def to_table(images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> pa.Table:
    pixels = int(np.prod(images.shape[1:]))
    flat = np.ascontiguousarray(gather(images, rows), dtype=np.uint8).reshape(-1)
    image_column = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(pixels), len(rows), [None, pa.py_buffer(flat)]
    )
    return pa.table(
        {
            "image": image_column,
            "label": pa.array(gather(labels, rows).astype(np.uint8)),
            "source_index": pa.array(rows.astype(np.uint32)),
        }
    )


def write(
    dataset_id: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    source_payload_sha256: Mapping[str, str],
    class_names: tuple[str, ...],
    options: ShardOptions,
    put: Callable[[str, bytes], None],
) -> Manifest:
    """Cut a split from the source arrays and encode it as Parquet shards, one at a time: each shard's
    rows are gathered, encoded, hashed and handed to ``put(name, data)`` before the next is read, so
    memory holds one shard whatever the split's size (the arrays may be memory-mapped). Returns the
    manifest naming them, for the caller to write last."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{dataset_id}/{split}: expected uint8 images (n, h, w) and n labels, got images "
            f"{images.dtype}{images.shape} and labels {labels.dtype}{labels.shape}"
        )
    rows = split_order(split, len(labels), options)
    compression = None if options.compression == "none" else options.compression
    entries = []
    for number, start in enumerate(range(0, max(len(rows), 1), options.rows_per_shard)):
        chunk = to_table(images, labels, rows[start : start + options.rows_per_shard])
        idx.release_pages(images)
        sink = io.BytesIO()
        pq.write_table(chunk, sink, compression=compression)
        data = sink.getvalue()
        digest = sha256(data)
        name = f"part-{number:05d}-{digest[:16]}.parquet"
        put(name, data)
        entries.append(ShardEntry(file=name, rows=chunk.num_rows, bytes=len(data), sha256=digest))
    return Manifest(
        dataset=dataset_id,
        split=split,
        rows=len(rows),
        image_shape=images.shape[1:],
        class_names=class_names,
        columns=COLUMNS,
        shards=tuple(entries),
        root_sha256=Manifest.root_hash(entries),
        seed=options.seed,
        validation_fraction=options.validation_fraction,
        rows_per_shard=options.rows_per_shard,
        compression=options.compression,
        source_payload_sha256=dict(source_payload_sha256),
    )


def encode(
    dataset_id: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    source_payload_sha256: Mapping[str, str],
    class_names: tuple[str, ...],
    options: ShardOptions,
) -> EncodedShardSet:
    """:func:`write` into memory: the manifest plus every file's bytes (for small sets and tests)."""
    files: dict[str, bytes] = {}
    manifest = write(
        dataset_id, split, images, labels, source_payload_sha256, class_names, options, files.__setitem__
    )
    return EncodedShardSet(manifest, files)


def decode(manifest: Manifest, files: Mapping[str, bytes]) -> pa.Table:
    """One table from the shard bytes, each verified against its manifest entry first."""
    tables = []
    for shard in manifest.shards:
        data = files[shard.file]
        if sha256(data) != shard.sha256:
            raise ValueError(f"shard {shard.file} does not match its manifest sha256")
        tables.append(pq.read_table(io.BytesIO(data)))
    return pa.concat_tables(tables)


def to_numpy(table: pa.Table, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, h, w), labels uint8 (n,)) from a shard table."""
    column = table.column("image").combine_chunks()
    pixels = int(np.prod(image_shape))
    raw = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    start = column.offset * pixels
    images = raw[start : start + len(column) * pixels].reshape((len(column), *image_shape))
    labels = table.column("label").to_numpy()
    return images, labels
