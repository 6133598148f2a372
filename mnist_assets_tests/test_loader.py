"""The streaming loader over a real shard set cut from the real MNIST t10k files (six shards)."""

from __future__ import annotations

import itertools
from collections import Counter

import dagster as dg
import numpy as np
import pytest

from mnist_assets import load, shards
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import ShardSetIOManager

KEY = dg.AssetKey(["mini", "shards"])
OPTIONS = shards.ShardOptions(rows_per_shard=300)


def store_split(root, images, labels, options=OPTIONS):
    encoded = shards.encode(
        "mini",
        "train",
        images,
        labels,
        {"train-images": "a", "train-labels": "b"},
        tuple("0123456789"),
        options,
    )
    store = ShardSetIOManager(root=str(root))
    store.store(store.asset_dir(KEY), "train", encoded)
    return encoded


@pytest.fixture
def stored(tmp_path, t10k_arrays):
    images, labels = t10k_arrays[0][:2000], t10k_arrays[1][:2000]
    encoded = store_split(tmp_path, images, labels)
    rows = shards.split_order("train", 2000, OPTIONS)
    assert len(encoded.manifest.shards) == 6
    return {"root": str(tmp_path), "images": images[rows], "labels": labels[rows]}


def as_rows(images: np.ndarray) -> Counter:
    return Counter(image.tobytes() for image in images)


def epochs_of(loader, batches_per_epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = list(loader)
    return [
        tuple(np.concatenate(part) for part in zip(*batches[i : i + batches_per_epoch], strict=True))
        for i in range(0, len(batches), batches_per_epoch)
    ]


def test_every_example_appears_exactly_once_per_epoch_in_a_new_order(stored):
    loader = load("mini", "train", batch_size=128, seed=7, epochs=2, storage=stored["root"])
    first, second = epochs_of(loader, batches_per_epoch=-(-1800 // 128))
    for images, labels in (first, second):
        assert as_rows(images) == as_rows(stored["images"])
        assert Counter(labels.tolist()) == Counter(stored["labels"].tolist())
    assert not np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], stored["labels"])  # shuffled, not the stored order


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(stored):
    def labels(seed):
        with load("mini", "train", batch_size=100, seed=seed, storage=stored["root"]) as loader:
            return np.concatenate([batch_labels for _, batch_labels in loader])

    assert np.array_equal(labels(3), labels(3))
    assert not np.array_equal(labels(3), labels(4))
    unshuffled = load("mini", "train", batch_size=100, storage=stored["root"])
    assert np.array_equal(np.concatenate([b for _, b in unshuffled]), stored["labels"])


def test_shuffling_mixes_across_shards_not_only_within_them(stored):
    loader = load("mini", "train", batch_size=300, seed=11, storage=stored["root"])
    order = [loader.shard_order(epoch).tolist() for epoch in range(4)]
    assert sorted(order[0]) == list(range(6)) and len({tuple(o) for o in order}) > 1


def mean_classes_per_batch(loader) -> float:
    return float(np.mean([len(np.unique(labels)) for _, labels in loader]))


@pytest.mark.parametrize("seed", [None, 1])
def test_batches_of_a_class_sorted_file_hold_nearly_every_class(tmp_path, t10k_arrays, seed):
    order = np.argsort(t10k_arrays[1][:2000], kind="stable")  # the same examples, class by class
    store_split(tmp_path, t10k_arrays[0][:2000][order], t10k_arrays[1][:2000][order])
    loader = load("mini", "train", batch_size=64, seed=seed, drop_remainder=True, storage=str(tmp_path))
    # a uniform draw of 64 from 10 classes of about 200 each holds 9.99 classes on average
    assert mean_classes_per_batch(loader) >= 9.5


def test_batches_have_the_documented_shapes_and_the_remainder_comes_last(stored):
    batches = list(load("mini", "train", batch_size=512, storage=stored["root"]))
    assert [len(labels) for _, labels in batches] == [512, 512, 512, 264]
    images, labels = batches[0]
    assert images.dtype == np.uint8 and images.shape == (512, 28, 28) and labels.dtype == np.int32
    dropped = load("mini", "train", batch_size=512, drop_remainder=True, storage=stored["root"])
    assert [len(labels) for _, labels in dropped] == [512, 512, 512]


def test_tf_data_yields_the_same_batches_as_numpy(stored):
    loader = load("mini", "train", batch_size=128, seed=5, epochs=2, storage=stored["root"])
    expected = list(loader)
    got = [(images.numpy(), labels.numpy()) for images, labels in loader.tf()]
    assert len(got) == len(expected)
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    images, labels = next(iter(loader.tf(channel_axis=True)))
    assert images.shape == (128, 28, 28, 1) and images.dtype.name == "uint8" and labels.dtype.name == "int32"


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_tf_data_repeating_ends_every_epoch_on_its_own_remainder_like_numpy(stored, drop_remainder):
    # 1800 rows in batches of 512: 3 full batches and 264 left per epoch, which no batch mixes with
    # the next epoch's examples (kept last in each epoch, or dropped)
    loader = load(
        "mini",
        "train",
        batch_size=512,
        seed=9,
        epochs=None,
        drop_remainder=drop_remainder,
        storage=stored["root"],
    )
    expected = list(itertools.islice(loader, 10))
    got = [(images.numpy(), labels.numpy()) for images, labels in loader.tf().take(10)]
    sizes = [len(labels) for _, labels in got]
    assert sizes == ([512] * 10 if drop_remainder else [512, 512, 512, 264] * 2 + [512, 512])
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_a_damaged_shard_is_refused_naming_the_split_the_file_and_the_repair(stored, tmp_path):
    loader = load("mini", "train", batch_size=300, storage=stored["root"])
    victim = loader.manifest.shards[2].file
    path = tmp_path / "mini/shards/train" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=rf"mini/shards\[train\]: shard {victim} .* refresh --verify"):
        list(load("mini", "train", batch_size=300, storage=stored["root"]))


def test_a_commit_during_a_read_does_not_take_the_files_away(stored, t10k_arrays, tmp_path):
    loader = load("mini", "train", batch_size=300, storage=stored["root"])
    batches = iter(loader)
    first = next(batches)
    # another writer commits a different shard set now: the old files lose their names
    store_split(tmp_path, t10k_arrays[0][-2000:], t10k_arrays[1][-2000:])
    rest = list(batches)
    images = np.concatenate([first[0], *(b[0] for b in rest)])
    assert as_rows(images) == as_rows(stored["images"])


def test_a_split_never_materialized_says_what_to_do(tmp_path):
    with pytest.raises(StorageError, match="is missing; materialize"):
        load("mini", "holdout", storage=str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load("mini", "validation", storage=str(tmp_path))
