"""A checkpoint's file and data version say what the model is, so a retrain that reproduces it is no news.

``python -m mnist_assets_tests.test_model_file CATALOG STORAGE`` trains the mini catalog's ``cnn`` on the
shards in STORAGE and prints its data version and file sha256 (what the two-process test runs).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np

from mnist_assets import model_file
from mnist_assets.hashing import sha256

CONFIG = {
    "class_name": "Sequential",
    "config": {
        "layers": [
            {
                "class_name": "Conv2D",
                "config": {"dtype": {"name": "float32", "shared_object_id": 140668202632208}},
            },
            {
                "class_name": "Dense",
                "config": {"dtype": {"name": "float32", "shared_object_id": 140668202632208}},
            },
            {"class_name": "Dense", "config": {"dtype": {"name": "bfloat16", "shared_object_id": 9}}},
        ]
    },
}


def weights_h5(values: dict[str, np.ndarray]) -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for path, value in values.items():
            h5.create_dataset(path, data=value)
    return buffer.getvalue()


def keras_zip(config: dict, h5: bytes, date: tuple = (2026, 12, 3, 11, 6, 32), saved: str = "11:06") -> bytes:
    """A ``.keras`` zip as ``model.save`` lays it out (metadata, config, weights), dated ``date``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3", "date_saved": saved}))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr(zipfile.ZipInfo("model.weights.h5", date_time=date), h5)
    return buffer.getvalue()


MODEL = {
    "layers/dense/vars/0": np.arange(6, dtype=np.float32).reshape(2, 3),
    "layers/dense/vars/1": np.ones(3),
}


def test_shared_objects_are_numbered_in_order_met_not_by_address():
    layers = model_file.canonical_config(CONFIG)["config"]["layers"]
    assert [layer["config"]["dtype"]["shared_object_id"] for layer in layers] == [1, 1, 2]


def test_the_same_model_saved_at_other_times_and_addresses_is_the_same_file_and_version():
    moved = json.loads(json.dumps(CONFIG).replace("140668202632208", "94000000000123"))
    first = keras_zip(CONFIG, weights_h5(MODEL))
    later = keras_zip(moved, weights_h5(MODEL), date=(2027, 1, 2, 3, 4, 5), saved="12:00")
    assert sha256(first) != sha256(later)
    assert model_file.canonical_keras(first) == model_file.canonical_keras(later)
    assert model_file.data_version(first) == model_file.data_version(later)
    with zipfile.ZipFile(io.BytesIO(model_file.canonical_keras(later))) as archive:
        assert json.loads(archive.read("metadata.json")) == {"keras_version": "3"}
        assert {info.date_time for info in archive.infolist()} == {model_file.ZIP_DATE}


def test_the_optimizer_state_is_not_the_model_but_every_weight_and_the_architecture_are():
    version = model_file.data_version(keras_zip(CONFIG, weights_h5(MODEL)))
    with_optimizer = {**MODEL, "optimizer/vars/0": np.int64(7)}
    assert model_file.data_version(keras_zip(CONFIG, weights_h5(with_optimizer))) == version
    other_weight = {**MODEL, "layers/dense/vars/1": np.full(3, 2.0)}
    other_dtype = {**MODEL, "layers/dense/vars/1": np.ones(3, np.float32)}
    other_shape = {**MODEL, "layers/dense/vars/0": MODEL["layers/dense/vars/0"].reshape(3, 2)}
    renamed = {"layers/dense_1/vars/0": MODEL["layers/dense/vars/0"], "layers/dense/vars/1": np.ones(3)}
    for weights in (other_weight, other_dtype, other_shape, renamed):
        assert model_file.data_version(keras_zip(CONFIG, weights_h5(weights))) != version
    unshared = json.loads(
        json.dumps(CONFIG).replace('"shared_object_id": 9', '"shared_object_id": 140668202632208')
    )
    assert model_file.data_version(keras_zip(unshared, weights_h5(MODEL))) != version


def train_and_report(catalog: str, storage: str) -> None:
    """Train the mini catalog's ``cnn`` on the shards in ``storage``; print its data version and sha256."""
    from mnist_assets import models
    from mnist_assets.assets.checkpoints import train_checkpoint
    from mnist_assets.catalog import parse_catalog
    from mnist_assets.storage.io_managers import ShardSetIOManager

    dataset = parse_catalog(json.loads(open(catalog).read()))["mini_mnist"]
    config = models.training_configs(dataset)["cnn"]
    trained = train_checkpoint(dataset, config, ShardSetIOManager(root=storage), log=None)
    versions = {
        "data_version": model_file.data_version(trained.keras_bytes),
        "sha256": sha256(trained.keras_bytes),
    }
    print(json.dumps(versions))


def test_two_trainings_in_two_processes_give_the_same_file_and_data_version(project, tmp_path):
    """Two processes at once on the shards the project built: the same file (to the byte) and data
    version as each other and as the checkpoint the project stored, trained in a third process."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(project.document))
    command = [sys.executable, "-m", "mnist_assets_tests.test_model_file", str(catalog), str(project.storage)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(process.communicate(timeout=600)[0].splitlines()[-1]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    stored = json.loads((project.storage / "mini_mnist/checkpoint/cnn/checkpoint.json").read_text())
    keras_bytes = (project.storage / "mini_mnist/checkpoint/cnn" / stored["file"]).read_bytes()
    assert (
        results[0]
        == results[1]
        == {"data_version": model_file.data_version(keras_bytes), "sha256": stored["sha256"]}
    )


if __name__ == "__main__":
    train_and_report(*sys.argv[1:])
