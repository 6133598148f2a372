"""Object-storage faults on a real S3 server (moto's, on loopback): they read as the same one sentence
as local ones (what, the URL, the service's reason, what to do), not as an s3fs traceback."""

from __future__ import annotations

import dagster as dg
import pytest

from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import NumpyIOManager, ShardSetIOManager
from mnist_assets_tests.test_faults_crashes import synthetic_shard_set

pytestmark = pytest.mark.deploy


def test_a_commit_to_a_bucket_that_does_not_exist_names_the_url_and_what_to_do(s3):
    store = ShardSetIOManager(root="s3://no-such-bucket/artifacts")
    encoded = synthetic_shard_set(1, 400)

    def write(put):
        for name, data in encoded.files.items():
            put(name, data)
        return encoded.manifest

    with pytest.raises(StorageError) as raised:
        store.commit(dg.AssetKey(["small", "shards"]), "train", write)

    message = str(raised.value)
    assert message.startswith("small/shards[train]: could not write s3://no-such-bucket/artifacts/small/")
    assert "bucket does not exist" in message.lower(), message
    assert message.endswith(
        "What to do: check the storage URL, its credentials and the service, then refresh again."
    )


def test_a_staged_upload_to_a_missing_bucket_is_the_same_sentence(s3):
    store = NumpyIOManager(root="s3://no-such-bucket/artifacts")
    with pytest.raises(StorageError) as raised, store.staged(dg.AssetKey(["small", "idx"]), "x") as staged:
        staged.file.write(b"bytes")
        staged.commit()
    message = str(raised.value)
    assert message.startswith(
        "small/idx[x]: could not write s3://no-such-bucket/artifacts/small/idx/x.npy: "
    ), message
    assert "bucket does not exist" in message.lower(), message
