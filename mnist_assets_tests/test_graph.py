"""The whole graph, materialized in-process into a real instance and a temporary directory."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mnist_assets import idx
from mnist_assets.assets import dataset_assets, materialization_steps
from mnist_assets.catalog import FILE_KEYS, load_catalog, parse_catalog
from mnist_assets.io_managers import io_managers
from mnist_assets_tests.conftest import (
    FASHION_DEBIAN,
    MINI_TEST,
    MINI_TRAIN,
    mini_catalog_document,
)


def materialize(dataset, root, instance, names, partition=None, run_config=None, raise_on_error=True):
    prefix = dataset.id
    return dg.materialize(
        dataset_assets(dataset),
        selection=[dg.AssetKey([prefix, n]) for n in names],
        partition_key=partition,
        instance=instance,
        resources=io_managers(str(root)),
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def latest_materialization(instance, key, partition=None) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].asset_materialization


def latest_data_version(instance, key, partition=None) -> str:
    return latest_materialization(instance, key, partition).tags["dagster/data_version"]


@pytest.fixture(scope="module")
def built(mini_mirror, http_server, tmp_path_factory):
    """The mini dataset's every asset and partition, built the way the README's commands build it."""
    url = http_server.mount("mini-graph", mini_mirror["directory"])
    dataset = parse_catalog(mini_catalog_document(mini_mirror, [url]))["mini_mnist"]
    root = tmp_path_factory.mktemp("artifacts")
    checks = []
    with dg.instance_for_test() as instance:
        for names, partition in materialization_steps():
            result = materialize(dataset, root, instance, names, partition)
            checks += result.get_asset_check_evaluations()
        yield {"dataset": dataset, "root": root, "instance": instance, "checks": checks, "url": url}


def test_every_asset_and_partition_lands_in_storage(built, mini_mirror):
    base = built["root"] / "mini_mnist"
    url = latest_materialization(built["instance"], dg.AssetKey(["mini_mnist", "raw_gzip"]), "train-images")
    assert url.metadata["url"].value == built["url"] + "train-images-idx3-ubyte.gz"
    for key in FILE_KEYS:
        filename = mini_mirror["files"][key]["filename"]
        assert (base / "raw_gzip" / f"{key}.gz").read_bytes() == (
            mini_mirror["directory"] / filename
        ).read_bytes()
        stored = np.load(base / "idx" / f"{key}.npy", allow_pickle=False)
        np.testing.assert_array_equal(stored, mini_mirror["arrays"][key])
    rows = {
        s: json.loads((base / "shards" / s / "_manifest.json").read_text())["rows"]
        for s in ("train", "test", "holdout")
    }
    assert rows == {"train": MINI_TRAIN - MINI_TRAIN // 10, "test": MINI_TRAIN // 10, "holdout": MINI_TEST}
    record = json.loads((base / "checkpoint" / "checkpoint.json").read_text())
    assert (base / "checkpoint" / record["file"]).exists()


def test_every_check_ran_and_passed(built):
    names = {(c.asset_key.path[-1], c.check_name) for c in built["checks"]}
    assert names == {
        ("idx", "header_shape_dtype_agree"),
        ("idx", "labels_in_class_range"),
        ("shards", "manifest_matches_files"),
        ("shards", "split_sizes_and_disjointness"),
        ("checkpoint", "holdout_accuracy_above_floor"),
    }
    assert all(c.passed for c in built["checks"])


def test_every_asset_has_a_code_version_and_a_content_data_version(built, mini_mirror):
    instance, dataset = built["instance"], built["dataset"]
    for assets_def in dataset_assets(dataset):
        if isinstance(assets_def, dg.AssetsDefinition):
            assert all(assets_def.code_versions_by_key.values())
    for key in FILE_KEYS:
        version = latest_data_version(instance, dg.AssetKey(["mini_mnist", "raw_gzip"]), key)
        assert version == mini_mirror["files"][key]["payload_sha256"]
        # the array is a pure function of the payload: the payload's sha256 versions both
        array_version = latest_data_version(instance, dg.AssetKey(["mini_mnist", "idx"]), key)
        assert array_version == idx.sha256(idx.encode(mini_mirror["arrays"][key])) == version
    manifest = json.loads((built["root"] / "mini_mnist/shards/holdout/_manifest.json").read_text())
    assert manifest["source_payload_sha256"] == {
        key: mini_mirror["files"][key]["payload_sha256"] for key in ("test-images", "test-labels")
    }
    assert (
        latest_data_version(instance, dg.AssetKey(["mini_mnist", "shards"]), "holdout")
        == manifest["root_sha256"]
    )
    record = json.loads((built["root"] / "mini_mnist/checkpoint/checkpoint.json").read_text())
    assert latest_data_version(instance, dg.AssetKey(["mini_mnist", "checkpoint"])) == record["sha256"]


def test_checkpoint_metrics_reproduce_with_plain_keras_on_the_holdout_shards(built):
    import keras
    import pyarrow.parquet as pq

    base = built["root"] / "mini_mnist"
    record = json.loads((base / "checkpoint" / "checkpoint.json").read_text())
    model = keras.saving.load_model(base / "checkpoint" / record["file"])
    table = pq.read_table(base / "shards" / "holdout", columns=["image", "label"])
    images = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(-1, 28, 28, 1)
    loss, accuracy = model.evaluate(images, table.column("label").to_numpy(), verbose=0)
    assert accuracy == pytest.approx(record["metrics"]["holdout"]["accuracy"], abs=1e-6)
    assert loss == pytest.approx(record["metrics"]["holdout"]["loss"], rel=1e-5)
    assert record["metrics"]["holdout"]["accuracy"] > 0.5  # ten classes: chance is 0.1
    metadata = (
        built["instance"]
        .get_latest_materialization_event(dg.AssetKey(["mini_mnist", "checkpoint"]))
        .asset_materialization.metadata
    )
    assert metadata["holdout_accuracy"].value == record["metrics"]["holdout"]["accuracy"]
    assert metadata["parameter_count"].value == model.count_params()
    assert {"train_loss", "test_accuracy", "epochs", "training_seconds"} <= set(metadata)


def test_shards_metadata_carries_row_count_and_column_schema(built):
    event = (
        built["instance"]
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["mini_mnist", "shards"]), asset_partitions=["test"]),
            limit=1,
        )
        .records[0]
    )
    metadata = event.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == MINI_TRAIN // 10
    names = [c.name for c in metadata["dagster/column_schema"].schema.columns]
    assert names == ["image", "label", "source_index"]


def test_fashion_mnist_labels_come_from_the_debian_package(tmp_path):
    if not FASHION_DEBIAN.exists():
        pytest.fail("install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
    dataset = load_catalog()["fashion_mnist"]
    with dg.instance_for_test() as instance:
        for key in ("train-labels", "test-labels"):
            materialize(dataset, tmp_path, instance, ["raw_gzip", "idx"], key)
        labels = np.load(tmp_path / "fashion_mnist/idx/train-labels.npy", allow_pickle=False)
        assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10
        assert (
            latest_data_version(instance, dg.AssetKey(["fashion_mnist", "raw_gzip"]), "test-labels")
            == dataset.files["test-labels"].payload_sha256
        )


def test_status_lists_every_partition_with_its_artifact(built):
    from mnist_assets.definitions import build_definitions
    from mnist_assets.status import dataset_status

    defs = build_definitions({"mini_mnist": built["dataset"]}, str(built["root"]))
    rows = dataset_status(built["instance"], defs, "mini_mnist")
    assert len(rows) == 4 + 4 + 3 + 1
    assert all(r["materialized"] and r["data_version"] and r["code_version"] for r in rows)
    assert all(Path(r["path"]).exists() for r in rows)
