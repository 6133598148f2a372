"""The whole graph, materialized in-process into a real instance and a temporary directory."""

import base64
import dataclasses
import io
import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from mnist_assets import hashing, idx, model_file
from mnist_assets.assets import dataset_assets, materialization_steps
from mnist_assets.assets.common import BlockingCheck, versioned_asset
from mnist_assets.catalog import FILE_KEYS, load_catalog, parse_catalog
from mnist_assets.rebuild.judgement import JUDGEMENT
from mnist_assets.storage.io_managers import io_managers
from mnist_assets_tests.support import (
    FASHION_DEBIAN,
    MINI_TEST,
    MINI_TRAIN,
    mini_catalog_document,
)


def materialize(dataset, root, instance, names, partition=None, run_config=None, raise_on_error=True):
    prefix = dataset.id
    return dg.materialize(
        dataset_assets(dataset, JUDGEMENT),
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
        for names, partition in materialization_steps(dataset):
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
    record = json.loads((base / "checkpoint" / "cnn" / "checkpoint.json").read_text())
    assert (base / "checkpoint" / "cnn" / record["file"]).exists()


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


def test_a_blocking_check_is_part_of_its_assets_code_version():
    """A check is written once, as a BlockingCheck: it makes the asset's check spec, and adding or
    rewording one changes the asset's code version, so the asset shows stale on that edit."""
    floor = BlockingCheck("above_floor", "At least the floor. Judged before the result is stored.")
    key = dg.AssetKey(["mini_mnist", "probe"])

    def build(*checks: BlockingCheck) -> dg.AssetsDefinition:
        @versioned_asset(JUDGEMENT.fresh, checks=checks, key=key, io_manager_key="json_io_manager")
        def probe(context):
            return None

        return probe

    one, added = build(floor), build(floor, BlockingCheck("below_ceiling", "At most the ceiling."))
    reworded = build(dataclasses.replace(floor, description="At least the new floor."))
    versions = {assets_def.code_versions_by_key[key] for assets_def in (one, added, reworded)}
    assert len(versions) == 3
    assert [(spec.name, spec.blocking, spec.description) for spec in one.check_specs] == [
        ("above_floor", True, floor.description)
    ]
    assert floor.result(False, {"floor": 1}).check_name == "above_floor"


def test_every_asset_has_a_code_version_and_a_content_data_version(built, mini_mirror):
    instance, dataset = built["instance"], built["dataset"]
    for assets_def in dataset_assets(dataset, JUDGEMENT):
        if isinstance(assets_def, dg.AssetsDefinition):
            assert all(assets_def.code_versions_by_key.values())
    for key in FILE_KEYS:
        version = latest_data_version(instance, dg.AssetKey(["mini_mnist", "raw_gzip"]), key)
        assert version == mini_mirror["files"][key]["payload_sha256"]
        # the array is a pure function of the payload: the payload's sha256 versions both
        array_version = latest_data_version(instance, dg.AssetKey(["mini_mnist", "idx"]), key)
        assert array_version == hashing.sha256(idx.encode(mini_mirror["arrays"][key])) == version
    manifest = json.loads((built["root"] / "mini_mnist/shards/holdout/_manifest.json").read_text())
    assert manifest["source_payload_sha256"] == {
        key: mini_mirror["files"][key]["payload_sha256"] for key in ("test-images", "test-labels")
    }
    assert (
        latest_data_version(instance, dg.AssetKey(["mini_mnist", "shards"]), "holdout")
        == manifest["root_sha256"]
    )
    record = json.loads((built["root"] / "mini_mnist/checkpoint/cnn/checkpoint.json").read_text())
    keras_bytes = (built["root"] / "mini_mnist/checkpoint/cnn" / record["file"]).read_bytes()
    assert hashing.sha256(keras_bytes) == record["sha256"]
    # the model's content (config and weights), not the zip's bytes: a retrain that reproduces it matches
    checkpoint_version = latest_data_version(instance, dg.AssetKey(["mini_mnist", "checkpoint"]), "cnn")
    assert checkpoint_version == model_file.data_version(keras_bytes)


def test_checkpoint_metrics_reproduce_with_plain_keras_on_the_holdout_shards(built):
    import keras
    import pyarrow.parquet as pq

    base = built["root"] / "mini_mnist"
    record = json.loads((base / "checkpoint" / "cnn" / "checkpoint.json").read_text())
    model = keras.saving.load_model(base / "checkpoint" / "cnn" / record["file"])
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
    for split, metrics in record["metrics"].items():  # rounded to 4 places, still numbers (the Plots tab)
        for name, value in metrics.items():
            assert metadata[f"{split}_{name}"].value == round(value, 4)
            assert isinstance(metadata[f"{split}_{name}"], dg.FloatMetadataValue)
    assert metadata["training_seconds"].value == round(record["training_seconds"], 2)
    assert metadata["parameter_count"].value == model.count_params()
    assert metadata["epochs"].value == record["epochs"]


def picture_markdown(metadata, key: str) -> tuple[str, bytes]:
    """(alt text, PNG bytes) of the markdown picture ``key`` of a materialization's metadata."""
    value = metadata[key]
    assert isinstance(value, dg.MarkdownMetadataValue), (key, value)
    match = re.fullmatch(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", value.md_str)
    assert match, (key, value.text[:80])
    png = base64.b64decode(match.group(2))
    assert len(png) <= 150_000
    Image.open(io.BytesIO(png)).load()  # a whole, valid PNG
    return match.group(1), png


def test_checkpoint_metadata_carries_pictures_and_the_history_table(built):
    key = dg.AssetKey(["mini_mnist", "checkpoint"])
    metadata = latest_materialization(built["instance"], key).metadata
    record = json.loads((built["root"] / "mini_mnist/checkpoint/cnn/checkpoint.json").read_text())
    alts = {
        k: picture_markdown(metadata, k)[0]
        for k in ("training_curves", "confusion_matrix", "confident_mistakes")
    }
    assert "loss and accuracy per epoch" in alts["training_curves"]
    assert "confusion matrix on holdout" in alts["confusion_matrix"]
    assert "most confident holdout mistakes" in alts["confident_mistakes"]
    history = metadata["history"]
    assert isinstance(history, dg.TableMetadataValue)
    assert [r.data["epoch"] for r in history.records] == list(range(1, record["epochs"] + 1))
    columns = [c.name for c in history.schema.columns]
    assert columns[0] == "epoch" and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(columns)
    for row in history.records:
        assert all(round(row.data[c], 4) == row.data[c] for c in columns[1:])
    run_id = built["instance"].get_latest_materialization_event(key).run_id
    messages = [e.user_message for e in built["instance"].all_logs(run_id)]
    epochs = record["epochs"]
    assert [m.split(":")[0] for m in messages if re.match(r"epoch \d+/\d+: ", m)] == [
        f"epoch {e}/{epochs}" for e in range(1, epochs + 1)
    ]
    floor = [c for c in built["checks"] if c.check_name == "holdout_accuracy_above_floor"][0]
    assert floor.metadata["holdout_accuracy"].value == round(record["metrics"]["holdout"]["accuracy"], 4)


def test_shards_metadata_carries_pictures_and_the_shard_files_table(built):
    for split in ("train", "test", "holdout"):
        key = dg.AssetKey(["mini_mnist", "shards"])
        metadata = latest_materialization(built["instance"], key, split).metadata
        samples_alt, _ = picture_markdown(metadata, "samples")
        histogram_alt, _ = picture_markdown(metadata, "label_histogram")
        assert split in samples_alt and "class names" in samples_alt
        assert split in histogram_alt and "per class" in histogram_alt
        manifest = json.loads((built["root"] / f"mini_mnist/shards/{split}/_manifest.json").read_text())
        table = metadata["shard_files"]
        assert isinstance(table, dg.TableMetadataValue)
        assert [r.data for r in table.records] == [
            {"file": s["file"], "rows": s["rows"], "bytes": s["bytes"]} for s in manifest["shards"]
        ]


def test_idx_images_partitions_show_samples_with_their_class_names(built):
    instance, key = built["instance"], dg.AssetKey(["mini_mnist", "idx"])
    for file_key in ("train-labels", "test-labels"):
        assert "samples" not in latest_materialization(instance, key, file_key).metadata
    # labels partitions are built first, so a first build names the classes
    named_alt, named_png = picture_markdown(
        latest_materialization(instance, key, "train-images").metadata, "samples"
    )
    assert "with their class names" in named_alt
    # without stored labels the picture still comes, by row, and says why
    labels = built["root"] / "mini_mnist/idx/train-labels.npy"
    labels.rename(labels.with_suffix(".away"))
    try:
        materialize(built["dataset"], built["root"], instance, ["idx"], "train-images")
    finally:
        labels.with_suffix(".away").rename(labels)
    rows_alt, rows_png = picture_markdown(
        latest_materialization(instance, key, "train-images").metadata, "samples"
    )
    assert "train-labels not stored yet" in rows_alt and rows_png != named_png


def test_holdout_predictions_agree_with_the_recorded_metrics_and_plain_keras(built, mini_mirror):
    from mnist_assets import loader, training
    from mnist_assets.storage.io_managers import ShardSetIOManager

    base = built["root"] / "mini_mnist"
    record = json.loads((base / "checkpoint" / "cnn" / "checkpoint.json").read_text())
    model = training.model_from_bytes((base / "checkpoint" / "cnn" / record["file"]).read_bytes())
    store = ShardSetIOManager(root=str(built["root"]))
    with loader.open_split(store, "mini_mnist", "holdout", batch_size=64) as holdout:
        predicted = training.predict_holdout(model, holdout, 10, keep=5)
    images, labels = mini_mirror["arrays"]["test-images"], mini_mirror["arrays"]["test-labels"]
    confusion = predicted.confusion
    assert confusion.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()
    assert np.trace(confusion) / MINI_TEST == pytest.approx(
        record["metrics"]["holdout"]["accuracy"], abs=1e-6
    )
    probabilities = model.predict(images[..., np.newaxis], verbose=0)
    wrong = probabilities.argmax(axis=1) != labels
    expected = np.sort(probabilities.max(axis=1)[wrong])[::-1][:5]
    np.testing.assert_allclose(predicted.mistake_confidence, expected, rtol=1e-5)
    assert np.all(predicted.mistake_labels != predicted.mistake_predictions)
    shown = predicted.mistake_images.reshape(len(expected), -1)
    assert all((images.reshape(len(images), -1) == row).all(axis=1).any() for row in shown)


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
    assert len(rows) == 4 + 4 + 3 + 1 + 1  # files twice, splits, checkpoint[cnn], best_model
    assert all(r["materialized"] and r["data_version"] and r["code_version"] for r in rows)
    assert all(Path(r["path"]).exists() for r in rows)


def test_the_image_shape_comes_from_the_catalog(mini_mirror, http_server, tmp_path):
    """A catalog that says 14×14 refuses the real 28×28 files, naming the shape it expected."""
    url = http_server.mount("mini-shape", mini_mirror["directory"])
    document = mini_catalog_document(mini_mirror, [url])
    document["datasets"]["mini_mnist"]["image_shape"] = [14, 14]
    dataset = parse_catalog(document)["mini_mnist"]
    with dg.instance_for_test() as instance:
        result = materialize(
            dataset, tmp_path, instance, ["raw_gzip", "idx"], "test-images", raise_on_error=False
        )
        assert not result.success
        check = next(
            e for e in result.get_asset_check_evaluations() if e.check_name == "header_shape_dtype_agree"
        )
        sentence = (
            "mini_mnist/image_shape: the catalog says [14, 14], test-images holds 28×28 images: "
            'set "image_shape": [28, 28]'
        )
        assert not check.passed and check.metadata["problem"].value == sentence
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert sentence in failure.step_failure_data.error.message
    assert not (tmp_path / "mini_mnist/idx/test-images.npy").exists()
