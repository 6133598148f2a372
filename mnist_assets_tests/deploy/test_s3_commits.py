"""The object-store commit protocol on a real S3 server (moto's, on loopback): writers in separate
processes, a writer killed mid-upload, a writer stalled past the grace period, and garbage collection.

Every version is a real shard set of the mini data; every load is verified against its manifest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
from upath import UPath

from mnist_assets import shards
from mnist_assets.storage.faults import CommitConflict
from mnist_assets.storage.io_managers import ShardSetIOManager
from mnist_assets_tests.support import REPO

pytestmark = pytest.mark.deploy

KEY = dg.AssetKey(["mini_mnist", "shards"])
CONFLICT_EXIT = 3
WAIT_SECONDS = 60
CLOCK_TICK = 1.1
"""S3 time stamps have one-second resolution: waiting this long makes an object strictly older."""


def shard_store(root: str, grace_seconds: float = 0.0, keep_versions: int = 3) -> ShardSetIOManager:
    return ShardSetIOManager(root=root, grace_seconds=grace_seconds, keep_versions=keep_versions)


def version(arrays: dict, seed: int) -> shards.EncodedShardSet:
    """A train split of the mini data; another ``seed`` cuts other rows, so other files and manifest."""
    options = shards.ShardOptions(seed=seed, rows_per_shard=300)
    return shards.encode(
        "mini_mnist",
        "train",
        arrays["train-images"],
        arrays["train-labels"],
        {"train-images": "0" * 64, "train-labels": "1" * 64},
        tuple(str(d) for d in range(10)),
        options,
    )


def commit(store: ShardSetIOManager, encoded: shards.EncodedShardSet) -> None:
    def write(put):
        for name, data in encoded.files.items():
            put(name, data)
        return encoded.manifest

    store.commit(KEY, "train", write)


def loaded_manifest(store: ShardSetIOManager):
    """The committed manifest, after every shard it names was read and matched its sha256."""
    assert store.verify(KEY, "train") is None
    return store.read(store.asset_dir(KEY), "train", "mini_mnist/shards[train]").manifest


def objects(root: str) -> set[str]:
    directory = UPath(root) / "mini_mnist" / "shards" / "train"
    directory.fs.invalidate_cache()
    return {path.name for path in directory.iterdir()}


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_writer(root: str, seed: int, signals: Path, arrays_source: str) -> subprocess.Popen:
    """A writer process that commits version ``seed``: it uploads every shard, touches
    ``signals/uploaded-SEED``, waits for ``signals/go``, then writes the record. Exits CONFLICT_EXIT with
    the error on stderr if its commit lost."""
    script = arrays_source + textwrap.dedent(f"""
        import sys, time
        from mnist_assets.storage.faults import CommitConflict
        from mnist_assets_tests.deploy.test_s3_commits import KEY, shard_store, version

        encoded = version(arrays, {seed})
        signals = Path({str(signals)!r})

        def write(put):
            for name, data in encoded.files.items():
                put(name, data)
            (signals / "uploaded-{seed}").touch()
            while not (signals / "go").exists():
                time.sleep(0.05)
            return encoded.manifest

        try:
            shard_store({root!r}).commit(KEY, "train", write)
        except CommitConflict as error:
            print(error, file=sys.stderr)
            sys.exit({CONFLICT_EXIT})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def arrays(mini_mirror) -> dict:
    return mini_mirror["arrays"]


@pytest.fixture
def arrays_source(mini_mirror) -> str:
    """Python that rebuilds the same mini arrays in a child process (from the mirror's IDX files)."""
    directory = str(mini_mirror["directory"])
    return textwrap.dedent(f"""
        import gzip
        from pathlib import Path
        from mnist_assets import idx
        from mnist_assets_tests.support import MINI_FILENAMES
        arrays = {{
            key: idx.parse(gzip.decompress((Path({directory!r}) / MINI_FILENAMES[key]).read_bytes()))
            for key in ("train-images", "train-labels")
        }}
    """)


def test_two_writer_processes_race_exactly_one_record_wins_whole_and_a_reader_sees_a_whole_version(
    s3, arrays, arrays_source, tmp_path
):
    root = s3.url("race")
    store = shard_store(root)
    first = version(arrays, 1)
    commit(store, first)
    writers = {seed: start_writer(root, seed, tmp_path, arrays_source) for seed in (2, 3)}
    wait_until(lambda: all((tmp_path / f"uploaded-{seed}").exists() for seed in writers), "both uploads")

    # both writers' shards are in the bucket, neither record: a reader still gets the first version whole
    assert loaded_manifest(store) == first.manifest

    (tmp_path / "go").touch()  # both now put their record, each conditional on the first version's ETag
    outcomes = {
        seed: (writer.wait(WAIT_SECONDS), writer.communicate()[1]) for seed, writer in writers.items()
    }
    winners = [seed for seed, (code, _) in outcomes.items() if code == 0]
    losers = [seed for seed, (code, _) in outcomes.items() if code == CONFLICT_EXIT]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert "another writer committed this artifact" in outcomes[losers[0]][1]
    assert "Materialize the asset again" in outcomes[losers[0]][1]
    assert loaded_manifest(store) == version(arrays, winners[0]).manifest


def test_a_writer_sigkilled_mid_upload_leaves_the_previous_version_loading_verified(
    s3, arrays, arrays_source, tmp_path
):
    root = s3.url("killed")
    first, dead = version(arrays, 1), version(arrays, 2)
    commit(shard_store(root), first)
    writer = start_writer(root, 2, tmp_path, arrays_source)
    wait_until(lambda: (tmp_path / "uploaded-2").exists(), "the upload")
    writer.send_signal(signal.SIGKILL)  # the next version's shards are up, its manifest never will be
    assert writer.wait(WAIT_SECONDS) == -signal.SIGKILL

    store = shard_store(root, keep_versions=1)  # no older set kept for rollback: only the grace period
    assert loaded_manifest(store) == first.manifest
    orphans = set(dead.files) - set(first.files)
    assert orphans and orphans <= objects(root)

    # collection: within the grace period nothing unnamed goes; after it, what no record names does
    time.sleep(CLOCK_TICK)
    second, third = version(arrays, 3), version(arrays, 4)
    commit(shard_store(root, grace_seconds=3600), second)
    assert orphans <= objects(root)
    time.sleep(CLOCK_TICK)
    commit(store, third)
    left = objects(root)
    assert not orphans & left
    # the record just replaced keeps its files for readers that opened it; the one before that does not
    assert set(second.files) <= left and set(third.files) <= left
    assert not (set(first.files) - set(second.files) - set(third.files)) & left
    assert loaded_manifest(store) == third.manifest


def test_a_writer_stalled_past_the_grace_period_cannot_commit_over_the_files_collected_meanwhile(
    s3, arrays, arrays_source, tmp_path
):
    root = s3.url("stalled")
    store = shard_store(root)
    commit(store, version(arrays, 1))
    writer = start_writer(root, 2, tmp_path, arrays_source)
    wait_until(lambda: (tmp_path / "uploaded-2").exists(), "the upload")
    stalled_files = set(version(arrays, 2).files)

    # while it stalls, two later commits replace the record and collect its uploads (past the grace)
    time.sleep(CLOCK_TICK)
    commit(store, version(arrays, 3))
    time.sleep(CLOCK_TICK)
    latest = version(arrays, 4)
    commit(store, latest)
    assert not stalled_files & objects(root)

    (tmp_path / "go").touch()  # it wakes up and puts its record, which would name collected files
    assert writer.wait(WAIT_SECONDS) == CONFLICT_EXIT, writer.communicate()
    assert "another writer committed this artifact" in writer.communicate()[1]
    assert loaded_manifest(store) == latest.manifest


def test_the_first_version_is_committed_only_once(s3, arrays):
    """Two writers that both found no record: the second's If-None-Match fails instead of replacing."""
    root = s3.url("first-version")
    store = shard_store(root)
    first, second = version(arrays, 1), version(arrays, 2)

    def write_then_race(put):
        for name, data in second.files.items():
            put(name, data)
        commit(store, first)  # another writer's whole commit lands before this one's record
        return second.manifest

    with pytest.raises(CommitConflict, match="another writer committed"):
        store.commit(KEY, "train", write_then_race)
    assert loaded_manifest(store) == first.manifest
