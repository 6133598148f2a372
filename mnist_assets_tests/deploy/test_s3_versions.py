"""Kept versions on a real S3 server (moto's, on loopback): retention by server-side copies and
record copies, and a verified rollback of each kind."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from mnist_assets.storage import versions
from mnist_assets.storage.io_managers import NumpyIOManager, ShardSetIOManager
from mnist_assets_tests.test_faults_crashes import synthetic_shard_set

pytestmark = pytest.mark.deploy


def test_shard_set_versions_are_kept_on_s3_and_roll_back_verified(s3):
    store = ShardSetIOManager(root=s3.url("versions-shards"), grace_seconds=0.0, keep_versions=2)
    key = dg.AssetKey(["v", "shards"])
    sets = [synthetic_shard_set(seed, 400) for seed in (1, 2, 3)]
    ids = [store.store(store.asset_dir(key), "train", encoded)["version"] for encoded in sets]
    artifact = store.artifact(key, "train")

    assert artifact.versions() == ids[1:] and artifact.current_version() == ids[2]
    assert versions.rollback(artifact, ids[1]) == ids[2]
    assert store.verify(key, "train") is None
    assert store.read(store.asset_dir(key), "train", "v/shards[train]").manifest == sets[1].manifest
    assert artifact.current_version() == ids[1]
    # the replaced set's files were copied to the kept ones (server-side), the restored set's copies went
    kept_only = artifact.named_by_kept() - artifact.named_by_current()
    assert kept_only and {p.name for p in artifact.files_dir.iterdir()} == kept_only
    assert versions.verify(artifact, ids[2]) is None


def test_single_file_versions_are_server_side_copies_on_s3(s3):
    store = NumpyIOManager(root=s3.url("versions-npy"), keep_versions=2)
    key = dg.AssetKey(["v", "idx"])
    ids = [
        store.store(store.asset_dir(key), "labels", np.full(40, v, np.uint8))["version"] for v in (1, 2, 3)
    ]
    artifact = store.artifact(key, "labels")

    assert artifact.versions() == ids[1:] and artifact.current_version() == ids[2]
    versions.rollback(artifact, ids[1])
    np.testing.assert_array_equal(
        store.read(store.asset_dir(key), "labels", "v/idx"), np.full(40, 2, np.uint8)
    )
    assert artifact.current_version() == ids[1]
