import hashlib
import io
import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from mnist_assets import idx, shards
from mnist_assets.manifest import Manifest
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import ShardSetIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, TINY_TRAINING, write_idx_gz

OPTIONS = shards.ShardOptions(seed=7, validation_fraction=0.1, rows_per_shard=300)
SOURCES = {"train-images": "a" * 64, "train-labels": "b" * 64}


@pytest.fixture(scope="module")
def encoded(t10k_arrays):
    images, labels = t10k_arrays[0][:2000], t10k_arrays[1][:2000]
    return {
        split: shards.encode("mini", split, images, labels, SOURCES, tuple("0123456789"), OPTIONS)
        for split in ("train", "test")
    }


def test_train_and_test_partition_the_source_without_overlap(encoded):
    train, test = encoded["train"].manifest, encoded["test"].manifest
    assert (train.rows, test.rows) == (1800, 200)
    rows = {
        split: shards.decode(e.manifest, e.files).column("source_index").to_numpy()
        for split, e in encoded.items()
    }
    assert np.intersect1d(rows["train"], rows["test"]).size == 0
    assert sorted(np.concatenate(list(rows.values()))) == list(range(2000))


def test_the_seed_decides_the_split():
    a = shards.split_rows("test", 1000, OPTIONS)
    assert np.array_equal(a, shards.split_rows("test", 1000, OPTIONS))
    other = shards.ShardOptions(seed=8, validation_fraction=0.1, rows_per_shard=300)
    assert not np.array_equal(a, shards.split_rows("test", 1000, other))


def test_train_and_test_are_stored_in_the_seeds_order_and_holdout_in_the_files():
    for split in ("train", "test"):
        order = shards.split_order(split, 1000, OPTIONS)
        assert np.array_equal(order, shards.split_order(split, 1000, OPTIONS))
        assert np.array_equal(np.sort(order), shards.split_rows(split, 1000, OPTIONS))
        assert np.any(np.diff(order.astype(np.int64)) < 0)  # not sorted: a permutation of the split
    assert np.array_equal(shards.split_order("holdout", 1000, OPTIONS), np.arange(1000))


def sorted_by_class(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same examples, stored class by class (as many datasets are published)."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


def test_every_train_shard_of_a_class_sorted_file_holds_every_class_near_its_share(t10k_arrays):
    images, labels = sorted_by_class(t10k_arrays[0][:2000], t10k_arrays[1][:2000])
    encoded = shards.encode("mini", "train", images, labels, SOURCES, tuple("0123456789"), OPTIONS)
    table = shards.decode(encoded.manifest, encoded.files)
    share = np.bincount(table.column("label").to_numpy(), minlength=10) / table.num_rows
    for start in range(0, table.num_rows, OPTIONS.rows_per_shard):
        shard_labels = table.column("label").to_numpy()[start : start + OPTIONS.rows_per_shard]
        counts = np.bincount(shard_labels, minlength=10)
        # a uniform sample of 300: each class within about 3 standard deviations of its share
        assert np.all(np.abs(counts - share * len(shard_labels)) <= 20), counts


def test_manifest_records_shards_hashes_seed_and_sources(encoded):
    manifest = encoded["train"].manifest
    assert [s.rows for s in manifest.shards] == [300] * 6
    assert manifest.root_sha256 == Manifest.root_hash(manifest.shards)
    assert (manifest.seed, manifest.compression, manifest.source_payload_sha256) == (7, "zstd", SOURCES)
    assert [c.name for c in manifest.columns] == ["image", "label", "source_index"]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_rows_trace_back_to_the_source_idx_file(encoded, t10k_arrays):
    table = shards.decode(encoded["test"].manifest, encoded["test"].files)
    images, labels = shards.to_numpy(table, (28, 28))
    source = table.column("source_index").to_numpy()
    np.testing.assert_array_equal(images, t10k_arrays[0][source])
    np.testing.assert_array_equal(labels, t10k_arrays[1][source])


def test_stored_shards_open_in_pyarrow_pandas_duckdb_and_polars(encoded, tmp_path):
    store = ShardSetIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "shards"]))
    store.store(directory, "train", encoded["train"])
    files = sorted((tmp_path / "mini" / "shards" / "train").glob("part-*.parquet"))
    assert len(files) == 6
    pattern = str(tmp_path / "mini" / "shards" / "train" / "*.parquet")
    assert pq.read_table(files[0]).schema.field("image").type.byte_width == 784
    assert len(pd.read_parquet(files[0])["image"].iloc[0]) == 784
    assert duckdb.sql(f"select count(*), max(label) from '{pattern}'").fetchall() == [(1800, 9)]
    assert pl.read_parquet(pattern).height == 1800


def test_commit_replaces_a_shard_set_whole_and_removes_unreferenced_files(encoded, tmp_path, t10k_arrays):
    store = ShardSetIOManager(root=str(tmp_path), keep_versions=1)  # no old set kept for rollback
    directory = store.asset_dir(dg.AssetKey(["mini", "shards"]))
    store.store(directory, "train", encoded["train"])
    smaller = shards.encode(
        "mini",
        "train",
        t10k_arrays[0][:2000],
        t10k_arrays[1][:2000],
        SOURCES,
        tuple("0123456789"),
        shards.ShardOptions(seed=7, validation_fraction=0.1, rows_per_shard=1000),
    )
    store.store(directory, "train", smaller)
    split_dir = tmp_path / "mini" / "shards" / "train"
    visible = sorted(p.name for p in split_dir.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*smaller.files, "_manifest.json"])
    assert store.read(directory, "train", "mini/shards").manifest == smaller.manifest


@scenario(
    "Crashes and concurrency",
    "A bit flipped in a stored Parquet shard",
    "Loading fails naming the split and the damage; `mnist-assets refresh --verify` rebuilds it",
    "Nothing damaged is ever returned",
)
def test_a_flipped_bit_in_a_stored_shard_is_detected_on_load(encoded, tmp_path):
    store = ShardSetIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "shards"]))
    store.store(directory, "test", encoded["test"])
    shard = next((tmp_path / "mini" / "shards" / "test").glob("part-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"mini/shards\[test\].*damaged.*materialize it again"):
        store.read(directory, "test", "mini/shards[test]")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="compression"):
        shards.ShardOptions(compression="lzma")
    with pytest.raises(ValueError, match="validation_fraction"):
        shards.ShardOptions(validation_fraction=1.5)


def test_shards_written_one_at_a_time_are_the_bytes_of_the_whole_split_sliced(t10k_arrays):
    """Shard bytes (so file names and the root hash, the data version) are what encoding the whole
    split as one table and slicing it gave before shards were written one at a time."""
    images, labels = t10k_arrays[0][:2000], t10k_arrays[1][:2000]
    for split in ("train", "test"):
        table = shards.to_table(images, labels, shards.split_order(split, len(labels), OPTIONS))
        expected = []
        for start in range(0, table.num_rows, OPTIONS.rows_per_shard):
            sink = io.BytesIO()
            pq.write_table(table.slice(start, OPTIONS.rows_per_shard), sink, compression="zstd")
            expected.append(hashlib.sha256(sink.getvalue()).hexdigest())
        written = shards.encode("mini", split, images, labels, SOURCES, tuple("0123456789"), OPTIONS)
        assert [s.sha256 for s in written.manifest.shards] == expected


def publish_sorted_by_class(project) -> None:
    """Rewrite the project's train files as a valid IDX pair stored class by class (the same images,
    only their order changed) and pin the catalog to them."""
    images, labels = sorted_by_class(project.arrays["train-images"], project.arrays["train-labels"])
    for key, array in (("train-images", images), ("train-labels", labels)):
        entry = project.dataset["files"][key]
        entry["payload_sha256"] = write_idx_gz(project.mirror / MINI_FILENAMES[key], array)
        entry["payload_size"] = len(idx.encode(array))


@scenario(
    "Files",
    "A train file published sorted by class (valid IDX, the same images, only the order changed)",
    "Nothing: train is stored in the shard seed's random order, so every shard and batch mixes the "
    "classes and training reaches its floor",
    "Every example, traced to its source row",
)
def test_a_class_sorted_train_file_trains_to_its_floor(empty_project):
    publish_sorted_by_class(empty_project)
    empty_project.dataset["shards"] = {"rows_per_shard": 300}  # 6 train shards, not one
    summary, _ = empty_project.refresh()
    assert not summary.failed, [(s.asset, s.partition, s.error) for s in summary.failed]
    record = json.loads((empty_project.storage / "mini_mnist/checkpoint/cnn/checkpoint.json").read_text())
    assert record["metrics"]["holdout"]["accuracy"] >= TINY_TRAINING["accuracy_floor"]
