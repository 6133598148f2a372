import json
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest
from upath import UPath

from mnist_assets.manifest import TrainedCheckpoint
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.files import write_atomic
from mnist_assets.storage.io_managers import KerasIOManager, NumpyIOManager


def test_atomic_write_replaces_whole_and_leaves_no_temporary_files(tmp_path):
    target = UPath(tmp_path) / "a" / "b.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_npy_round_trip_without_pickle(tmp_path):
    store = NumpyIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "idx"]))
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    store.store(directory, "train-labels", array)
    np.testing.assert_array_equal(store.read(directory, "train-labels", "mini/idx"), array)


def test_an_npy_file_holding_a_pickle_is_refused(tmp_path):
    store = NumpyIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "idx"]))
    directory.mkdir(parents=True)
    np.save(directory / "train-labels.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StorageError, match="not a plain .npy"):
        store.read(directory, "train-labels", "mini/idx[train-labels]")


def test_a_missing_artifact_says_how_to_rebuild_it(tmp_path):
    store = NumpyIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "idx"]))
    with pytest.raises(StorageError, match=r"mini/idx\[test-images\]: .* is missing; materialize"):
        store.read(directory, "test-images", "mini/idx[test-images]")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", ""])
def test_names_cannot_escape_the_storage_root(tmp_path, name):
    store = NumpyIOManager(root=str(tmp_path))
    with pytest.raises(StorageError, match="unsafe"):
        store.asset_dir(dg.AssetKey(["mini", name]))


def test_a_checkpoint_record_with_an_unknown_field_is_refused_naming_it(tmp_path):
    from mnist_assets_tests.test_faults_crashes import checkpoint_value

    store = KerasIOManager(root=str(tmp_path))
    key = dg.AssetKey(["mini", "checkpoint"])
    store.store(store.asset_dir(key), None, checkpoint_value(1))
    assert store.read(store.asset_dir(key), None, "mini/checkpoint").record.config == {"seed": 1}

    record_path = tmp_path / "mini/checkpoint/checkpoint.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "holdout_acuracy": 0.9}))
    assert not store.exists(key, None)
    with pytest.raises(StorageError, match=r"(?s)checkpoint.json is invalid .*holdout_acuracy"):
        store.read(store.asset_dir(key), None, "mini/checkpoint")

    with pytest.raises(ValueError, match="holdout_acuracy"):  # nor is one made to be written
        TrainedCheckpoint(**dict(checkpoint_value(1).record), holdout_acuracy=1)
    with pytest.raises(TypeError, match="TrainedCheckpoint"):  # and storage writes typed records only
        store.store(store.asset_dir(key), None, SimpleNamespace(keras_bytes=b"x", record={"epochs": 1}))


def test_a_best_model_record_is_read_back_typed_and_a_wrong_one_is_refused_naming_its_file(tmp_path):
    from mnist_assets.loader import best_model_record
    from mnist_assets.models import BestModelRecord, Candidate
    from mnist_assets.storage.io_managers import JsonRecordIOManager

    store = JsonRecordIOManager(root=str(tmp_path))
    key = dg.AssetKey(["mini", "best_model"])
    chosen = BestModelRecord(
        dataset="mini",
        winner="cnn",
        checkpoint_sha256="0" * 64,
        checkpoint_file="mini/checkpoint/cnn/model-0000000000000000.keras",
        ranking=[Candidate(model="cnn", rank=1, competing=True, metrics={"test": {"accuracy": 0.9}})],
    )
    store.store(store.asset_dir(key), None, chosen)
    assert best_model_record("mini", store) == chosen

    path = tmp_path / "mini/best_model/record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "winner": None}))
    refused = r"mini/best_model: .*record.json is not a best_model record \(winner: "
    with pytest.raises(StorageError, match=refused):
        best_model_record("mini", store)
