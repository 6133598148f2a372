"""Refresh does the minimum: proofs counted from the event log, on the small real mirror."""

import gzip
import importlib.util
import json
import shutil
import sys
from collections import Counter

import dagster as dg
import numpy as np
import pytest

import mnist_assets.assets
from mnist_assets.catalog import parse_catalog
from mnist_assets.definitions import build_definitions
from mnist_assets.refresh import refresh
from mnist_assets_tests.conftest import MINI_FILENAMES, mini_catalog_document, write_idx_gz


def materialized(instance, defs) -> Counter:
    counts = Counter()
    for key in defs.resolve_asset_graph().materializable_asset_keys:
        for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=10_000).records:
            counts[(key.path[-1], record.partition_key)] += 1
    return counts


class Project:
    """A mirror directory served over loopback HTTP, a catalog, storage and one real instance."""

    def __init__(self, mini_mirror, http_server, tmp_path, instance):
        self.mirror = tmp_path / "mirror"
        shutil.copytree(mini_mirror["directory"], self.mirror)
        self.url = http_server.mount(f"refresh-{tmp_path.name}", self.mirror)
        self.document = mini_catalog_document(mini_mirror, [self.url])
        self.storage = tmp_path / "artifacts"
        self.instance = instance
        self.arrays = mini_mirror["arrays"]

    @property
    def dataset(self):
        return self.document["datasets"]["mini_mnist"]

    def defs(self, assets_module=None) -> dg.Definitions:
        datasets = parse_catalog(self.document)
        if assets_module is None:
            return build_definitions(datasets, str(self.storage))
        return build_definitions(datasets, str(self.storage), assets_module.dataset_assets)

    def refresh(self, defs=None, dry_run=False):
        defs = defs or self.defs()
        before = materialized(self.instance, defs)
        summary = refresh(defs, self.instance, ["mini_mnist"], dry_run=dry_run, log=lambda m: None)
        delta = materialized(self.instance, defs) - before
        return summary, delta


@pytest.fixture
def project(mini_mirror, http_server, tmp_path):
    with dg.instance_for_test() as instance:
        built = Project(mini_mirror, http_server, tmp_path, instance)
        _, delta = built.refresh()
        assert sum(delta.values()) == 4 + 4 + 3 + 1
        yield built


def test_a_second_refresh_with_nothing_changed_computes_nothing(project):
    summary, delta = project.refresh()
    assert delta == Counter()
    assert summary.ran == [] and summary.fresh == 12
    assert set(summary.artifacts) == {f"mini_mnist/{a}" for a in ("raw_gzip", "idx", "shards", "checkpoint")}


def test_a_training_config_change_recomputes_only_the_checkpoint(project):
    project.dataset["training"]["epochs"] = 2
    summary, delta = project.refresh()
    assert delta == Counter({("checkpoint", None): 1})
    assert summary.ran[0].causes == ["has a new code version"]


def test_a_shard_setting_change_recomputes_the_shards_and_the_checkpoint(project):
    project.dataset["shards"] = {"rows_per_shard": 700}
    _, delta = project.refresh()
    assert delta == Counter({("shards", "train"): 1, ("shards", "test"): 1, ("shards", "holdout"): 1, ("checkpoint", None): 1})


def test_new_bytes_for_one_file_recompute_only_what_is_built_from_it(project):
    labels = project.arrays["train-labels"].copy()
    labels[:10] = (labels[:10] + 1) % 10
    digest = write_idx_gz(project.mirror / MINI_FILENAMES["train-labels"], labels)
    project.dataset["files"]["train-labels"]["payload_sha256"] = digest
    summary, delta = project.refresh()
    assert delta == Counter(
        {
            ("raw_gzip", "train-labels"): 1,
            ("idx", "train-labels"): 1,
            ("shards", "train"): 1,
            ("shards", "test"): 1,
            ("checkpoint", None): 1,
        }
    )
    assert summary.ran[0].causes == ["has a new dependency data version (mini_mnist/urls[train-labels])"]


def test_a_redownload_with_an_identical_payload_recomputes_nothing_downstream(project):
    # the mirror now serves a re-compressed file: other gzip bytes, same payload
    path = project.mirror / MINI_FILENAMES["test-images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    project.dataset["mirrors"] = [project.url, project.url]  # a mirror-list change forces re-downloads
    _, delta = project.refresh()
    assert delta == Counter({("raw_gzip", k): 1 for k in MINI_FILENAMES})
    assert (project.storage / "mini_mnist/raw_gzip/test-images.gz").read_bytes() == path.read_bytes()


def test_changed_compute_code_recomputes_that_asset_and_downstream_only(project, tmp_path):
    """Load a copy of the assets module whose shards code differs, as an edit would."""
    text = open(mnist_assets.assets.__file__).read()
    edited = text.replace(
        "        split = context.partition_key\n",
        "        split = context.partition_key  # edited: a new comment is enough\n",
        1,
    )
    assert edited != text
    module_path = tmp_path / "edited_assets.py"
    module_path.write_text(edited)
    spec = importlib.util.spec_from_file_location("edited_assets", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["edited_assets"] = module
    spec.loader.exec_module(module)
    summary, delta = project.refresh(project.defs(module))
    # the shards rerun; their content is identical, so the checkpoint stays fresh
    assert delta == Counter({("shards", "train"): 1, ("shards", "test"): 1, ("shards", "holdout"): 1})
    assert all(step.causes == ["has a new code version"] for step in summary.ran)


def test_a_deleted_artifact_is_missing_and_rebuilt(project):
    victim = project.storage / "mini_mnist/idx/test-labels.npy"
    victim.unlink()
    summary, delta = project.refresh(dry_run=True)
    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.ran] == [("mini_mnist/idx", "test-labels")]
    assert "artifact missing from storage" in summary.ran[0].causes[0]
    _, delta = project.refresh()
    assert delta == Counter({("idx", "test-labels"): 1})
    np.testing.assert_array_equal(np.load(victim), project.arrays["test-labels"])


def test_dry_run_prints_the_plan_with_causes_and_changes_nothing(project):
    project.dataset["training"]["epochs"] = 2
    project.dataset["shards"] = {"rows_per_shard": 700}
    summary, delta = project.refresh(dry_run=True)
    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.ran] == [
        ("mini_mnist/shards", "train"), ("mini_mnist/shards", "test"),
        ("mini_mnist/shards", "holdout"), ("mini_mnist/checkpoint", None),
    ]
    assert json.loads(json.dumps(summary.to_dict()))["dry_run"] is True
