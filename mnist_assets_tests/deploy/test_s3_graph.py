"""The mini graph end to end with MNIST_ASSETS_STORAGE=s3://bucket/prefix on a real S3 server (moto's,
on loopback), through ``mnist-assets refresh`` as a user runs it; then a damaged object is found and
rebuilt by ``refresh --verify``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import dagster as dg
import pytest
from upath import UPath

from mnist_assets.shards import SPLITS
from mnist_assets.storage.io_managers import io_managers
from mnist_assets_tests.support import REPO, mini_catalog_document

pytestmark = pytest.mark.deploy

ARTIFACTS = {
    "gzip_io_manager": ("raw_gzip", ("train-images", "train-labels", "test-images", "test-labels")),
    "npy_io_manager": ("idx", ("train-images", "train-labels", "test-images", "test-labels")),
    "shards_io_manager": ("shards", SPLITS),
    "keras_io_manager": ("checkpoint", ("cnn",)),
    "json_io_manager": ("best_model", (None,)),
}


@pytest.fixture
def project(s3, mini_mirror, http_server, tmp_path):
    """A catalog naming the mini mirror, a DAGSTER_HOME of its own, and storage on the S3 server."""
    url = http_server.mount(f"s3-graph-{tmp_path.name}", mini_mirror["directory"])
    catalog, home = tmp_path / "catalog.json", tmp_path / "home"
    catalog.write_text(json.dumps(mini_catalog_document(mini_mirror, [url])))
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    storage = s3.url(f"graph-{tmp_path.name}")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MNIST_ASSETS_CATALOG": str(catalog),
        "MNIST_ASSETS_STORAGE": storage,
        "PYTHONPATH": str(REPO),
    }
    return {"storage": storage, "env": env, "directory": tmp_path}


def refresh(project, *args: str) -> dict:
    command = [sys.executable, "-m", "mnist_assets.cli", "refresh", "mini_mnist", *args]
    done = subprocess.run(
        command, env=project["env"], cwd=project["directory"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def damaged(storage: str) -> list[str]:
    """Every stored artifact that fails its thorough check, read back from the S3 server."""
    problems = []
    for resource, manager in io_managers(storage).items():
        asset, partitions = ARTIFACTS[resource]
        for partition in partitions:
            if problem := manager.verify(dg.AssetKey(["mini_mnist", asset]), partition):
                problems.append(problem)
    return problems


def test_the_mini_graph_refreshes_on_s3_and_verify_rebuilds_a_damaged_object(project):
    storage = project["storage"]
    first = refresh(project)
    assert not first["failed"] and len(first["ran"]) == 13
    assert damaged(storage) == []
    assert not UPath(storage).joinpath("mini_mnist", "shards", "train").joinpath(".lock").exists()

    # one shard object overwritten with other bytes (same name, same size): only a thorough check sees it
    store = io_managers(storage)["shards_io_manager"]
    with contextlib.closing(store.open(dg.AssetKey(["mini_mnist", "shards"]), "train")) as split:
        entry = split.manifest.shards[0]
        path = UPath(split.location) / entry.file
    path.fs.pipe_file(path.path, bytes(entry.bytes))
    assert any(entry.file in problem for problem in damaged(storage))
    assert refresh(project)["ran"] == []  # a plain refresh trusts what is stored

    repaired = refresh(project, "--verify")
    assert not repaired["failed"]
    assert ("mini_mnist/shards", "train") in {(step["asset"], step["partition"]) for step in repaired["ran"]}
    assert damaged(storage) == []
