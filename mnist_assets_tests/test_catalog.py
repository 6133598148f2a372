import json

import pytest

from mnist_assets.catalog import (
    DEFAULT_CATALOG,
    FILE_KEYS,
    CatalogError,
    load_catalog,
    parse_catalog,
    redact_url,
)
from mnist_assets_tests.faults import scenario


def test_packaged_catalog_lists_both_datasets_with_four_pinned_files():
    catalog = load_catalog()
    assert {"mnist", "fashion_mnist"} <= set(catalog)
    for dataset in catalog.values():
        assert list(dataset.files) == list(FILE_KEYS)
        assert len(dataset.class_names) == 10
        for file in dataset.files.values():
            assert file.payload_sha256 or file.gzip_md5
    assert catalog["fashion_mnist"].class_names[9] == "Ankle boot"
    assert any("/usr/share/datasets/fashion-mnist" in m for m in catalog["fashion_mnist"].mirrors)
    assert all(m.startswith(("https://", "http://")) for m in catalog["mnist"].mirrors)


def test_a_file_is_found_by_its_partition_key_and_an_unknown_key_names_the_files():
    dataset = load_catalog()["mnist"]
    assert dataset.file("test-labels") is dataset.files["test-labels"]
    with pytest.raises(KeyError, match="mnist: no file 'test-label'; the files are train-images, "):
        dataset.file("test-label")


def test_fashion_mnist_pins_match_the_debian_payloads():
    """The pins are of the decompressed payload, so Debian's re-compressed files verify."""
    from mnist_assets.download import verify
    from mnist_assets_tests.conftest import FASHION_DEBIAN

    dataset = load_catalog()["fashion_mnist"]
    for file in dataset.files.values():
        if file.key.endswith("labels"):
            assert verify((FASHION_DEBIAN / file.filename).read_bytes(), file) == file.payload_sha256


def test_mirror_override_by_run_config_then_environment_then_catalog(tmp_path):
    dataset = load_catalog()["fashion_mnist"]
    env = {dataset.mirror_env_var: f"http://mirror.internal/fm, {tmp_path}"}
    assert dataset.mirror_env_var == "MNIST_ASSETS_MIRROR_FASHION_MNIST"
    assert dataset.resolve_mirrors(environ=env) == [
        "http://mirror.internal/fm/",
        tmp_path.as_uri() + "/",
    ]
    assert dataset.resolve_mirrors(["https://other/"], environ=env) == ["https://other/"]
    assert dataset.resolve_mirrors(environ={})[0] == "file:///usr/share/datasets/fashion-mnist/"
    urls = dataset.file_urls(["https://other/"])
    assert urls["test-labels"] == ["https://other/t10k-labels-idx1-ubyte.gz"]


def test_mirror_with_a_forbidden_scheme_is_refused_naming_the_dataset():
    dataset = load_catalog()["mnist"]
    with pytest.raises(CatalogError, match=r"mnist: .*'ftp'"):
        dataset.resolve_mirrors(["ftp://example.org/mnist/"])


def test_credentials_never_leave_a_url_shown_to_people():
    assert redact_url("https://user:secret@host:8080/p/x.gz") == "https://***@host:8080/p/x.gz"
    assert redact_url("https://host/p") == "https://host/p"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["datasets"].update({"Bad/Id": d["datasets"].pop("mnist")}), "dataset id"),
        (lambda d: d["datasets"]["mnist"]["files"].pop("test-labels"), "files must be exactly"),
        (lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(filename="../x.gz"), "plain file"),
        (lambda d: d["datasets"]["mnist"]["files"]["test-labels"].pop("payload_sha256"), "pin"),
        (lambda d: d["datasets"]["mnist"].update(mirrors=[]), "mnist/mirrors: .*at least 1 item"),
        (
            lambda d: d["datasets"]["mnist"].update(trainng={"epochs": 2}),
            "mnist/trainng: unknown key 'trainng'; allowed keys: class_names, files, homepage, image_shape, "
            "mirrors, models, shards, title, training",
        ),
        (
            lambda d: d["datasets"]["mnist"]["models"].update({"Big CNN": {}}),
            r"mnist/models: model name 'Big CNN' must be lowercase letters",
        ),
        (
            lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(payload_sha=""),
            "mnist/files/test-labels/payload_sha: unknown key 'payload_sha'; "
            "allowed keys: filename, gzip_md5, payload_sha256, payload_size",
        ),
        (lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(payload_size="big"), "payload_size"),
        (lambda d: d["datasets"]["mnist"].update(id="other"), "unknown key 'id'"),
        (lambda d: d.update(dataset={}), "unknown key 'dataset'; allowed keys: datasets"),
    ],
)
def test_malformed_catalog_entries_are_rejected(mutate, message):
    document = json.loads(DEFAULT_CATALOG.read_text())
    mutate(document)
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document)


def test_a_misspelled_training_or_shard_setting_is_refused_with_the_allowed_keys():
    from mnist_assets.definitions import build_definitions

    document = json.loads(DEFAULT_CATALOG.read_text())
    document["datasets"]["mnist"]["training"] = {"epoch": 2}
    with pytest.raises(
        CatalogError, match=r"mnist/training/epoch: unknown key 'epoch'; allowed keys: .*epochs"
    ):
        build_definitions(parse_catalog(document), "unused")
    document["datasets"]["mnist"]["training"] = {}
    document["datasets"]["mnist"]["models"]["small_cnn"] = {"filters": [8]}
    with pytest.raises(
        CatalogError, match=r"mnist/models/small_cnn/filters: unknown key 'filters'; .*conv_filters"
    ):
        build_definitions(parse_catalog(document), "unused")
    document["datasets"]["mnist"]["models"]["small_cnn"] = {}
    document["datasets"]["mnist"]["shards"] = {"rows_per_shards": 10}
    with pytest.raises(CatalogError, match=r"mnist/shards: unknown key 'rows_per_shards'; .*rows_per_shard"):
        build_definitions(parse_catalog(document), "unused")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"shards": {"validation_fraction": 2}},
            "mnist/shards: validation_fraction is 2.0, expected a share",
        ),
        ({"shards": {"rows_per_shard": 0}}, "mnist/shards: rows_per_shard is 0, expected a whole number"),
        ({"shards": {"compression": "lz77"}}, "mnist/shards: compression is 'lz77', expected one of zstd"),
        ({"shards": {"seed": "x"}}, 'mnist/shards/seed: found "x", expected a valid integer'),
        ({"training": {"epochs": 0}}, "mnist/training/epochs: found 0, expected greater than or equal to 1"),
        ({"training": {"epochs": "ten"}}, 'mnist/training/epochs: found "ten", expected a valid integer'),
        ({"models": {"big": {"dropout": 1.5}}}, "mnist/models/big/dropout: found 1.5, expected less than 1"),
        (
            {"models": {"big": {"conv_filters": []}}},
            r"mnist/models/big/conv_filters: found \[\], expected at",
        ),
        (
            {"models": {"big": {"conv_filters": [8, 0]}}},
            r"mnist/models/big/conv_filters: found \[8, 0\], expected a list",
        ),
        ({"class_names": ["a"]}, r'mnist/class_names: found \["a"\], expected at least 2 items'),
        ({"image_shape": [28]}, r"mnist/image_shape: found \[28\], expected \[height, width\]"),
        ({"image_shape": [28, 0]}, r"mnist/image_shape/1: found 0, expected greater than 0"),
    ],
)
@scenario(
    "Catalog",
    "A setting of a dataset entry with a wrong value (`shards`, `training`, `models`, `class_names`, "
    "`image_shape`: wrong type, out of range, too short)",
    "One sentence when the definitions load: `mnist/models/big/dropout: found 1.5, expected less than 1`",
    "Nothing is built from it; the catalog file is not changed",
)
def test_a_wrong_setting_value_names_the_key_what_was_found_and_what_is_expected(entry, message):
    from mnist_assets.definitions import build_definitions

    document = json.loads(DEFAULT_CATALOG.read_text())
    document["datasets"]["mnist"].update(entry)
    with pytest.raises(CatalogError, match=f"^{message}") as refused:
        build_definitions(parse_catalog(document), "unused")
    assert "\n" not in str(refused.value) and "pydantic" not in str(refused.value)
