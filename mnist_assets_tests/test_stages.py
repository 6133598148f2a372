"""The stages' layer functions called directly, as plain functions over plain values: no Dagster run, no
TensorFlow, no training. Real parts only: the mini catalog's dataset, numpy arrays, files under
``tmp_path``, the real IO managers on them and an ephemeral Dagster instance for what was recorded."""

import copy
import gzip
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest

from mnist_assets import idx, models, shards
from mnist_assets.assets import checkpoints, raw, splits
from mnist_assets.assets.common import asset_key
from mnist_assets.catalog import parse_catalog
from mnist_assets.dagster_private import observation
from mnist_assets.manifest import CheckpointRecord, TrainedCheckpoint, TrainingRecord
from mnist_assets.storage.io_managers import KerasIOManager, ShardSetIOManager
from mnist_assets.tags import ANSWERED, COLUMN_SCHEMA, FETCHED_FROM, PINNED, ROW_COUNT, SERVED_AS
from mnist_assets_tests.support import mini_catalog_document, write_idx_gz

MIRROR = "http://127.0.0.1:9/mini/"
"""A mirror URL the catalog names; nothing here connects to it."""


@pytest.fixture(scope="module")
def document(mini_mirror) -> dict:
    return mini_catalog_document(mini_mirror, [MIRROR])


def dataset_of(document: dict, **changes):
    """The mini dataset as the catalog parses it, with ``changes`` to its entry."""
    changed = copy.deepcopy(document)
    changed["datasets"]["mini_mnist"].update(changes)
    return parse_catalog(changed)["mini_mnist"]


@pytest.fixture(scope="module")
def dataset(document):
    return dataset_of(document)


def parsed(array: np.ndarray) -> idx.Parsed:
    """What streaming the IDX file of ``array`` learns (the same as :func:`idx.gunzip_to_npy` reports)."""
    return idx.Parsed(array.dtype, array.shape, "0" * 64, array.max().item() if array.size else 0)


IMAGES = np.zeros((3, 28, 28), np.uint8)
LABELS = np.array([0, 9, 3], np.uint8)


# --- raw: the IDX header and the labels, judged before the array is stored ------------------------


def test_an_images_file_must_hold_the_catalogs_image_shape_and_a_labels_file_one_dimension(document):
    assert raw.expected_kind("train-images", dataset_of(document)) == (3, (28, 28))
    assert raw.expected_kind("test-images", dataset_of(document, image_shape=[32, 20])) == (3, (32, 20))
    assert raw.expected_kind("test-labels", dataset_of(document, image_shape=[32, 20])) == (1, ())


def test_right_headers_have_no_problem(dataset):
    assert raw.header_problem(dataset, "train-images", parsed(IMAGES)) is None
    assert raw.header_problem(dataset, "test-labels", parsed(LABELS)) is None


def test_images_of_another_size_name_the_catalog_key_found_and_expected(dataset):
    problem = raw.header_problem(dataset, "train-images", parsed(np.zeros((3, 32, 30), np.uint8)))
    assert problem == (
        "mini_mnist/image_shape: the catalog says [28, 28], train-images holds 32×30 images: "
        'set "image_shape": [32, 30]'
    )


@pytest.mark.parametrize(
    ("file_key", "array", "found", "expected"),
    [
        ("train-labels", np.zeros((3, 2), np.uint8), "uint8 of shape (3, 2)", "uint8 labels (n,)"),
        (
            "test-images",
            np.zeros((3, 28, 28), np.int16),
            "int16 of shape (3, 28, 28)",
            "uint8 images (n, 28, 28)",
        ),
        ("test-images", np.zeros(3, np.uint8), "uint8 of shape (3,)", "uint8 images (n, 28, 28)"),
    ],
)
def test_a_header_of_the_wrong_kind_names_the_file_found_and_expected(
    dataset, file_key, array, found, expected
):
    problem = raw.header_problem(dataset, file_key, parsed(array))
    assert problem == (
        f"mini_mnist/files/{file_key}: the file holds {found}, {expected} expected: "
        "check the file's pins and its mirror"
    )


def test_the_header_check_fails_with_the_problem_and_passes_without_one(dataset):
    wrong = raw.header_check(dataset, "train-labels", parsed(np.zeros((3, 2), np.uint8)))
    assert (wrong.check_name, wrong.passed) == ("header_shape_dtype_agree", False)
    assert (
        wrong.metadata["shape"].value == "(3, 2)" and "files/train-labels" in wrong.metadata["problem"].value
    )
    right = raw.header_check(dataset, "train-labels", parsed(LABELS))
    assert right.passed and "problem" not in right.metadata


def test_a_label_beyond_the_class_names_fails_naming_the_key_and_the_last_one_passes(dataset):
    beyond = raw.labels_check(dataset, "test-labels", parsed(np.array([0, 10], np.uint8)))
    assert (beyond.check_name, beyond.passed) == ("labels_in_class_range", False)
    assert beyond.metadata["max_label"].value == 10
    assert (
        beyond.metadata["problem"].value
        == "mini_mnist/class_names: labels reach 10, class_names has 10 names"
    )
    last = raw.labels_check(dataset, "test-labels", parsed(np.array([0, 9], np.uint8)))
    assert last.passed and "problem" not in last.metadata


def test_pixel_values_are_not_labels(dataset):
    images = raw.labels_check(dataset, "train-images", parsed(np.full((1, 28, 28), 255, np.uint8)))
    assert images.passed and images.metadata["applies"].value == "no (image file)"


def test_parse_idx_writes_the_array_as_npy_and_judges_it(dataset, tmp_path):
    labels = np.array([1, 12, 3], np.uint8)  # 12: beyond the ten class names
    digest = write_idx_gz(tmp_path / "labels.gz", labels)
    with (tmp_path / "labels.npy").open("wb") as sink:
        found, checks = raw.parse_idx(dataset, "train-labels", (tmp_path / "labels.gz").read_bytes(), sink)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy", allow_pickle=False), labels)
    assert (found.shape, found.payload_sha256, found.maximum) == ((3,), digest, 12)
    assert [(c.check_name, c.passed) for c in checks] == [
        ("header_shape_dtype_agree", True),
        ("labels_in_class_range", False),
    ]


def test_parse_idx_refuses_what_is_not_idx_naming_dataset_file_and_what_to_do(dataset, tmp_path):
    with (tmp_path / "x.npy").open("wb") as sink, pytest.raises(dg.Failure) as refused:
        raw.parse_idx(dataset, "test-labels", gzip.compress(b"<html>maintenance</html>"), sink)
    message = str(refused.value.description)
    assert message.startswith(
        "mini_mnist: test-labels (t10k-labels-idx1-ubyte.gz) is not a usable IDX file: "
    )
    assert "bad magic number" in message and "materialize raw_gzip[test-labels] again" in message


# --- raw: the urls source's versions and the evidence of another payload -------------------------


def test_the_pinned_version_is_the_pins_alone(dataset):
    file = dataset.file("train-images")
    assert raw.pinned_version(file) == raw.pinned_version(
        file.model_copy(update={"filename": "elsewhere.gz"})
    )
    assert raw.pinned_version(file) != raw.pinned_version(
        file.model_copy(update={"payload_sha256": "f" * 64})
    )
    assert raw.pinned_version(file) != raw.pinned_version(dataset.file("test-images"))


def test_a_local_mirror_differs_when_its_payload_is_not_the_pinned_one_or_unreadable(dataset):
    file, url = dataset.file("train-labels"), "file:///m/train-labels-idx1-ubyte.gz"
    assert raw.served_differs(file, {"url": url, "payload_sha256": file.payload_sha256}, None) is None
    assert raw.served_differs(file, {"url": url, "payload_sha256": "e" * 64}, None) == {
        "payload_sha256": "e" * 64
    }
    unreadable = {"unreadable": "not a valid gzip stream", "gzip_sha256": "d" * 64}
    assert raw.served_differs(file, {"url": url, **unreadable}, None) == unreadable


def test_an_http_mirror_differs_only_when_the_url_that_last_verified_identifies_its_file_otherwise(dataset):
    file, url = dataset.file("train-labels"), MIRROR + "train-labels-idx1-ubyte.gz"
    head = {"url": url, "ETag": '"b"', "Content-Length": "60008"}
    fetched = {FETCHED_FROM: url, SERVED_AS: {"ETag": '"a"', "Content-Length": "60008"}}
    assert raw.served_differs(file, head, fetched) == {"ETag": '"b"', "Content-Length": "60008"}
    assert (
        raw.served_differs(file, head, {**fetched, SERVED_AS: {k: v for k, v in head.items() if k != "url"}})
        is None
    )
    assert raw.served_differs(file, head, None) is None  # never downloaded from: the pin guards the download
    assert raw.served_differs(file, head, {**fetched, FETCHED_FROM: "http://other/x.gz"}) is None
    assert raw.served_differs(file, head, {FETCHED_FROM: url}) is None  # no headers recorded: no evidence


def record_fetch(instance, dataset, file_key: str, url: str, served: dict) -> None:
    """raw_gzip[file_key] verified from ``url``, which identified its file as ``served``."""
    key = asset_key(dataset, "raw_gzip")
    metadata = {FETCHED_FROM: url, SERVED_AS: dg.MetadataValue.json(served)}
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=file_key, metadata=metadata))


def test_url_observation_versions_the_payload_and_moves_only_on_evidence(dataset):
    instance, url = dg.DagsterInstance.ephemeral(), MIRROR + "train-labels-idx1-ubyte.gz"
    pinned = raw.pinned_version(dataset.file("train-labels"))
    first = raw.url_observation(dataset, "train-labels", None, instance)
    assert (first.asset_key, first.partition, first.data_version) == (
        asset_key(dataset, "urls"),
        "train-labels",
        pinned,
    )
    assert first.metadata["mirror"].value == "none answered" and first.metadata[ANSWERED].value is False

    record_fetch(instance, dataset, "train-labels", url, {"ETag": '"a"'})
    same = raw.url_observation(dataset, "train-labels", {"url": url, "ETag": '"a"'}, instance)
    assert same.data_version == pinned and same.metadata[ANSWERED].value is True
    changed = raw.url_observation(dataset, "train-labels", {"url": url, "ETag": '"b"'}, instance)
    assert changed.data_version not in (None, pinned) and changed.metadata["mirror"].value == url

    instance.report_runless_asset_event(changed)  # recorded: without new evidence it stands
    assert raw.url_observation(dataset, "train-labels", None, instance).data_version == changed.data_version
    assert raw.url_observation(dataset, "test-labels", None, instance).data_version == raw.pinned_version(
        dataset.file("test-labels")
    )  # another file's evidence is not this one's


def test_a_new_pin_replaces_the_standing_version(document):
    instance, before = dg.DagsterInstance.ephemeral(), dataset_of(document)
    pinned = {PINNED: raw.pinned_version(before.file("test-images"))}
    standing = observation(asset_key(before, "urls"), "test-images", "served-other-bytes", pinned)
    instance.report_runless_asset_event(standing)
    assert raw.url_observation(before, "test-images", None, instance).data_version == "served-other-bytes"
    files = copy.deepcopy(document["datasets"]["mini_mnist"]["files"])
    files["test-images"]["payload_sha256"] = "c" * 64
    after = dataset_of(document, files=files)
    assert raw.url_observation(after, "test-images", None, instance).data_version == raw.pinned_version(
        after.file("test-images")
    )


# --- shards: the cut, its checks and what it shows ------------------------------------------------

OPTIONS = shards.ShardOptions(seed=7, validation_fraction=0.25, rows_per_shard=30, compression="zstd")
SOURCE_ROWS = 100


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images": rng.integers(0, 256, (SOURCE_ROWS, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(SOURCE_ROWS) % 10).astype(np.uint8),
        "test-images": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "test-labels": (np.arange(40) % 10).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def committed(dataset, arrays, tmp_path_factory):
    """Every split cut through a real shard store: (store, key, {split: (stored, manifest)})."""
    store = ShardSetIOManager(root=str(tmp_path_factory.mktemp("shards")))
    key = asset_key(dataset, "shards")

    def cut(split):
        sources = {k: f"{k}-version" for k in shards.SPLIT_SOURCES[split]}  # as the asset looks them up
        return splits.cut_split(
            dataset, split, arrays, sources, OPTIONS, lambda write: store.commit(key, split, write)
        )

    return store, key, {split: cut(split) for split in shards.SPLITS}


def stored_rows(committed, split: str) -> np.ndarray:
    store, key, _ = committed
    return splits.read_back(store, key, split, f"mini_mnist/shards[{split}]")[1]


def test_the_cut_gives_each_split_its_size_train_and_test_disjoint_and_whole(committed):
    _, _, cut = committed
    assert {s: m.rows for s, (_, m) in cut.items()} == {"train": 75, "test": 25, "holdout": 40}
    assert {s: len(m.shards) for s, (_, m) in cut.items()} == {"train": 3, "test": 1, "holdout": 2}
    train, test = set(stored_rows(committed, "train")), set(stored_rows(committed, "test"))
    assert not train & test and train | test == set(range(SOURCE_ROWS))
    np.testing.assert_array_equal(stored_rows(committed, "holdout"), np.arange(40))
    stored, encoded = cut["train"]
    assert stored.metadata["root_sha256"] == encoded.root_sha256
    assert encoded.source_payload_sha256 == {
        "train-images": "train-images-version",
        "train-labels": "train-labels-version",
    }


def test_the_split_check_passes_the_stored_rows_of_every_split(committed):
    for split in shards.SPLITS:
        result = splits.split_check(
            split, 40 if split == "holdout" else SOURCE_ROWS, stored_rows(committed, split), OPTIONS
        )
        assert (result.check_name, result.passed, result.metadata["problems"].value) == (
            "split_sizes_and_disjointness",
            True,
            "",
        ), split


def test_the_split_check_names_a_repeated_row_a_shared_row_and_another_seed(committed):
    train, test = stored_rows(committed, "train"), stored_rows(committed, "test")
    repeated = splits.split_check("test", SOURCE_ROWS, np.append(test[:-1], test[0]), OPTIONS)
    assert not repeated.passed
    assert (
        repeated.metadata["problems"].value
        == "a source row appears twice; rows are not the test split of seed 7"
    )
    shared = splits.split_check("test", SOURCE_ROWS, np.append(test[:-1], train[0]), OPTIONS)
    assert (
        shared.metadata["problems"].value
        == "rows are not the test split of seed 7; train and test share rows"
    )
    other_seed = shards.ShardOptions(seed=8, validation_fraction=0.25)
    reseeded = splits.split_check("train", SOURCE_ROWS, train, other_seed)
    assert (
        not reseeded.passed
        and "rows are not the train split of seed 8" in reseeded.metadata["problems"].value
    )
    short = splits.split_check("train", SOURCE_ROWS, train[1:], OPTIONS)
    assert "train and test do not cover the official train set" in short.metadata["problems"].value


def test_split_metadata_shows_the_columns_rows_shard_files_and_pictures(dataset, arrays, committed):
    _, _, cut = committed
    encoded = cut["train"][1]
    shown = splits.split_metadata(dataset, "train", arrays, encoded, OPTIONS)
    assert [c.name for c in shown[COLUMN_SCHEMA].columns] == ["image", "label", "source_index"]
    assert shown[ROW_COUNT] == 75
    assert [r.data["rows"] for r in shown["shard_files"].records] == [30, 30, 15]
    assert [r.data["file"] for r in shown["shard_files"].records] == [s.file for s in encoded.shards]
    for picture in ("samples", "label_histogram"):
        assert shown[picture].value.startswith("![mini_mnist train: ")


# --- checkpoints: the floor, the candidates, the choice and what it shows -------------------------


def test_the_floor_fails_below_it_and_passes_at_it():
    config = models.TrainConfig(accuracy_floor=0.8)

    def trained(accuracy: float) -> SimpleNamespace:
        # a plain stand-in for training.TrainedModel (importing it imports TensorFlow): floor_check reads
        # only its record, a real TrainingRecord
        metrics = {"holdout": {"accuracy": accuracy}}
        return SimpleNamespace(
            record=TrainingRecord(metrics=metrics, epochs=1, training_seconds=1.0, parameter_count=1)
        )

    below = checkpoints.floor_check(trained(0.799999), config)
    assert (below.check_name, below.passed) == ("holdout_accuracy_above_floor", False)
    assert (below.metadata["holdout_accuracy"].value, below.metadata["floor"].value) == (
        0.8,
        0.8,
    )  # rounded to show
    assert checkpoints.floor_check(trained(0.8), config).passed


def store_checkpoint(
    store: KerasIOManager, key: dg.AssetKey, name: str, test: float, parameters: int
) -> None:
    """What the keras IO manager commits for a trained configuration (model bytes are opaque to it)."""
    record = TrainedCheckpoint(
        metrics={"test": {"accuracy": test}, "holdout": {"accuracy": 0.5 + test / 10}},
        epochs=1,
        training_seconds=1.0,
        parameter_count=parameters,
        config={"name": name},
        shards_root_sha256={},
    )
    store.store(
        store.asset_dir(key), name, SimpleNamespace(keras_bytes=f"model {name}".encode(), record=record)
    )


@pytest.fixture
def stored(dataset, tmp_path):
    """Four configurations: two stored and tied, one stored but last failed, one never built."""
    store, key = KerasIOManager(root=str(tmp_path)), asset_key(dataset, "checkpoint")
    store_checkpoint(store, key, "big", test=0.9, parameters=500)
    store_checkpoint(store, key, "small", test=0.9, parameters=100)
    store_checkpoint(store, key, "failed", test=0.99, parameters=10)

    def last_failure(name: str) -> str | None:
        return "checkpoint[failed] fell below its floor" if name == "failed" else None

    return checkpoints.candidates(["big", "small", "failed", "never"], store, key, last_failure)


def test_candidates_read_stored_records_and_say_why_others_do_not_compete(stored):
    entries, paths = stored
    assert entries["failed"] == "not competing: checkpoint[failed] fell below its floor"
    assert entries["never"] == "not competing: no checkpoint stored (materialize checkpoint[never])"
    assert isinstance(entries["big"], CheckpointRecord) and entries["big"].parameter_count == 500
    assert set(paths) == {"big", "small"}
    assert Path(paths["small"]).read_bytes() == b"model small"


def test_choose_best_ranks_by_validation_then_fewer_parameters_and_lists_the_rest(dataset, stored):
    best = checkpoints.choose_best(dataset, *stored)
    assert (best.dataset, best.winner, best.checkpoint_file) == ("mini_mnist", "small", stored[1]["small"])
    assert [(c.model, c.rank, c.competing) for c in best.ranking] == [
        ("small", 1, True),
        ("big", 2, True),
        ("failed", None, False),
        ("never", None, False),
    ]
    assert best.ranking[1].note.endswith("ranked after it for more parameters (500 > 100)")


def test_no_competing_checkpoint_fails_with_the_reasons_and_what_to_do(dataset):
    with pytest.raises(dg.Failure) as refused:
        checkpoints.choose_best(dataset, {"default": "not competing: no checkpoint stored"}, {})
    message = str(refused.value.description)
    assert message.startswith(
        "mini_mnist: no model configuration has a checkpoint to compete (default: not competing"
    )
    assert "The previous best_model, if any, is kept" in message and "mnist-assets refresh" in message


def test_best_model_metadata_shows_the_winners_accuracies_and_the_whole_ranking(dataset, stored):
    shown = checkpoints.best_model_metadata(checkpoints.choose_best(dataset, *stored))
    assert (shown["winner"], shown["validation_accuracy"], shown["holdout_accuracy"]) == ("small", 0.9, 0.59)
    assert shown["checkpoint_path"].value == stored[1]["small"]
    assert [(r.data["model"], r.data["rank"]) for r in shown["ranking"].records] == [
        ("small", 1),
        ("big", 2),
        ("failed", None),
        ("never", None),
    ]
    assert "never used to choose" in shown["chosen_by"]


def test_each_model_configuration_is_observed_with_its_own_version(document):
    layers = {"training": {"epochs": 2}, "models": {"small": {}, "wide": {"dense_units": 64}}}
    configs = models.training_configs(dataset_of(document, **layers))
    seen = checkpoints.observe_model_configs(dataset_of(document, **layers), configs)
    assert [(o.asset_key.path[-1], o.partition) for o in seen] == [
        ("model_configs", "small"),
        ("model_configs", "wide"),
    ]
    assert [o.data_version for o in seen] == [models.config_version(c) for c in configs.values()]
    assert (
        seen[1].metadata["config"].value["dense_units"] == 64
        and seen[0].metadata["config"].value["epochs"] == 2
    )

    wider = models.training_configs(
        dataset_of(document, **{**layers, "models": {"small": {}, "wide": {"dense_units": 65}}})
    )
    again = checkpoints.observe_model_configs(dataset_of(document, **layers), wider)
    assert again[0].data_version == seen[0].data_version and again[1].data_version != seen[1].data_version
