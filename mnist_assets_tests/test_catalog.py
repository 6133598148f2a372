import json
import re

import dagster as dg
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
    from mnist_assets_tests.support import FASHION_DEBIAN

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
    with pytest.raises(CatalogError, match=r"^dataset mnist: .*'ftp'"):
        dataset.resolve_mirrors(["ftp://example.org/mnist/"])


def test_credentials_never_leave_a_url_shown_to_people():
    assert redact_url("https://user:secret@host:8080/p/x.gz") == "https://***@host:8080/p/x.gz"
    assert redact_url("https://host/p") == "https://host/p"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["datasets"].update({"Bad/Id": d["datasets"].pop("mnist")}), "dataset id"),
        (
            lambda d: d["datasets"]["mnist"]["files"].pop("test-labels"),
            "dataset mnist, key files: found test-images, train-images, train-labels, expected exactly",
        ),
        (lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(filename="../x.gz"), "plain file"),
        (lambda d: d["datasets"]["mnist"]["files"]["test-labels"].pop("payload_sha256"), "pin"),
        (
            lambda d: d["datasets"]["mnist"].update(mirrors=[]),
            r"dataset mnist, key mirrors: found \[\], expected a list of at least one mirror",
        ),
        (
            lambda d: d["datasets"]["mnist"].update(trainng={"epochs": 2}),
            "dataset mnist, key trainng: not a key here; allowed keys: class_names, files, homepage, "
            "image_shape, mirrors, models, shards, title, training",
        ),
        (
            lambda d: d["datasets"]["mnist"]["models"].update({"Big CNN": {}}),
            r"dataset mnist, key models: model name 'Big CNN' must be lowercase letters",
        ),
        (
            lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(payload_sha=""),
            "dataset mnist, key files/test-labels/payload_sha: not a key here; "
            "allowed keys: filename, gzip_md5, payload_sha256, payload_size",
        ),
        (
            lambda d: d["datasets"]["mnist"]["files"]["test-labels"].update(payload_size="big"),
            'key files/test-labels/payload_size: found "big", expected the decompressed file',
        ),
        (
            lambda d: d["datasets"]["mnist"].update(image_shape=[28]),
            r"dataset mnist, key image_shape: found \[28\], expected two positive integers",
        ),
        (lambda d: d["datasets"]["mnist"].update(id="other"), "dataset mnist, key id: not a key here"),
        (lambda d: d.update(dataset={}), "^unknown key 'dataset'; allowed keys: datasets"),
    ],
)
def test_malformed_catalog_entries_are_rejected(mutate, message):
    document = json.loads(DEFAULT_CATALOG.read_text())
    mutate(document)
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document)


def test_a_misspelled_training_or_shard_setting_breaks_its_dataset_only_naming_the_allowed_keys():
    from mnist_assets.catalog_errors import catalog_errors
    from mnist_assets.definitions import build_definitions

    def error_of(document) -> str:
        defs = build_definitions(parse_catalog(document), "unused")
        assert dg.AssetKey(["fashion_mnist", "shards"]) in defs.resolve_asset_graph().get_all_asset_keys()
        assert dg.AssetKey(["mnist", "shards"]) not in defs.resolve_asset_graph().get_all_asset_keys()
        return catalog_errors(defs)["mnist"]

    document = json.loads(DEFAULT_CATALOG.read_text())
    document["datasets"]["mnist"]["training"] = {"epoch": 2}
    assert re.match(
        r"dataset mnist, key training/epoch: not a key here; allowed keys: .*epochs", error_of(document)
    )
    document["datasets"]["mnist"]["training"] = {}
    document["datasets"]["mnist"]["models"]["small_cnn"] = {"filters": [8]}
    assert re.match(
        r"dataset mnist, key models/small_cnn/filters: not a key here; .*conv_filters", error_of(document)
    )
    document["datasets"]["mnist"]["models"]["small_cnn"] = {}
    document["datasets"]["mnist"]["shards"] = {"rows_per_shards": 10}
    assert re.match(
        r"dataset mnist, key shards/rows_per_shards: not a key here; .*rows_per_shard", error_of(document)
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"shards": {"validation_fraction": 2}}, "key shards: validation_fraction is 2.0, expected a share"),
        ({"shards": {"rows_per_shard": 0}}, "key shards: rows_per_shard is 0, expected a whole number"),
        ({"shards": {"compression": "lz77"}}, "key shards: compression is 'lz77', expected one of zstd"),
        ({"shards": {"seed": "x"}}, 'key shards/seed: found "x", expected a valid integer'),
        ({"training": {"epochs": 0}}, "key training/epochs: found 0, expected greater than or equal to 1"),
        ({"training": {"epochs": "ten"}}, 'key training/epochs: found "ten", expected a valid integer'),
        ({"models": {"big": {"dropout": 1.5}}}, "key models/big/dropout: found 1.5, expected less than 1"),
        (
            {"models": {"big": {"conv_filters": []}}},
            r"key models/big/conv_filters: found \[\], expected at least",
        ),
        (
            {"models": {"big": {"conv_filters": [8, 0]}}},
            r"key models/big/conv_filters: found \[8, 0\], expected a",
        ),
        ({"class_names": ["a"]}, r'key class_names: found \["a"\], expected a list of 2 to 256'),
        ({"image_shape": [28]}, r"key image_shape: found \[28\], expected two positive integers"),
    ],
)
@scenario(
    "Catalog",
    "A setting of a dataset entry with a wrong value (`shards`, `training`, `models`, `class_names`, "
    "`image_shape`: wrong type, out of range, too short)",
    "One line naming the catalog file, the dataset and the key: `… dataset mnist, key models/big/dropout: "
    "found 1.5, expected less than 1`",
    "Nothing is built from that dataset; the other datasets load and refresh",
)
def test_a_wrong_setting_value_breaks_its_dataset_naming_the_key_what_was_found_and_what_is_expected(
    entry, message
):
    from mnist_assets.catalog_errors import catalog_errors
    from mnist_assets.definitions import build_definitions

    document = json.loads(DEFAULT_CATALOG.read_text())
    document["datasets"]["mnist"].update(entry)
    try:  # the entry itself (parsing) or its settings (building the definitions)
        error = catalog_errors(build_definitions(parse_catalog(document), "unused"))["mnist"]
    except CatalogError as refused:
        error = str(refused)
    assert re.match(f"dataset mnist, {message}", error), error
    assert "\n" not in error and "pydantic" not in error
