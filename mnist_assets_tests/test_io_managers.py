import dagster as dg
import numpy as np
import pytest
from upath import UPath

from mnist_assets.io_managers import NumpyIOManager, StorageError, write_atomic


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
    np.testing.assert_array_equal(store.fetch(directory, "train-labels", "mini/idx"), array)


def test_an_npy_file_holding_a_pickle_is_refused(tmp_path):
    store = NumpyIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "idx"]))
    directory.mkdir(parents=True)
    np.save(directory / "train-labels.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StorageError, match="not a plain .npy"):
        store.fetch(directory, "train-labels", "mini/idx[train-labels]")


def test_a_missing_artifact_says_how_to_rebuild_it(tmp_path):
    store = NumpyIOManager(root=str(tmp_path))
    directory = store.asset_dir(dg.AssetKey(["mini", "idx"]))
    with pytest.raises(StorageError, match=r"mini/idx\[test-images\]: .* is missing; materialize"):
        store.fetch(directory, "test-images", "mini/idx[test-images]")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", ""])
def test_names_cannot_escape_the_storage_root(tmp_path, name):
    store = NumpyIOManager(root=str(tmp_path))
    with pytest.raises(StorageError, match="unsafe"):
        store.asset_dir(dg.AssetKey(["mini", name]))
