"""Storage faults on a real small filesystem: a tmpfs this test mounts (CI runs as root), filled up,
remounted read-only or bigger. Skipped, saying why, where mounting is impossible.

Every failure must read as one sentence (what, where, the system's reason, what to do) and leave no
byte behind that no record names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mnist_assets.manifest import Manifest
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import GzipIOManager, NumpyIOManager, ShardSetIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES
from mnist_assets_tests.test_faults_crashes import synthetic_shard_set

PAGE = 4096
SHARDS_KEY = dg.AssetKey(["small", "shards"])
FULL = re.compile(
    r"No space left on device \((?:(?P<needed>[\d,]+) bytes needed, )?(?P<free>[\d,]+) bytes free "
    r"on the filesystem mounted at (?P<mount>\S+)\)"
)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_filesystem(directory: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``directory`` for the block, unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {directory} (needs root, as CI has): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)  # a mapping still open


def remount(directory: Path, options: str) -> None:
    done = _mount("-o", f"remount,{options}", str(directory))
    assert done.returncode == 0, done.stderr


def used(directory: Path) -> int:
    """Bytes in use on the filesystem (what ``df`` shows): stray bytes count, wherever they hide."""
    stat = os.statvfs(directory)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def on_disk(size: int) -> int:
    return -(-size // PAGE) * PAGE


def commit(store: ShardSetIOManager, seed: int, rows_per_shard: int) -> Manifest:
    """Commit a synthetic train split one file at a time, as the shards asset does."""
    encoded = synthetic_shard_set(seed, rows_per_shard)

    def write(put) -> Manifest:
        for name, data in encoded.files.items():
            put(name, data)
        return encoded.manifest

    store.commit(SHARDS_KEY, "train", write)
    return encoded.manifest


@scenario(
    "Storage",
    "The disk fills up in the middle of a shard-set commit (a real 1.5 MB tmpfs)",
    "StorageError: `small/shards[train]: could not write <shard path>: No space left on device (N bytes "
    "needed, M bytes free on the filesystem mounted at <mount>)` and what to do; after space is freed "
    "the same commit succeeds",
    "The previous shard set, whole; the failed commit's files are removed before it raises "
    "(disk usage back to what it was)",
)
def test_a_full_disk_mid_commit_says_so_and_gives_the_space_back(tmp_path):
    with small_filesystem(tmp_path / "small", 1536 * 1024) as root:
        store = ShardSetIOManager(root=str(root))
        previous = commit(store, seed=1, rows_per_shard=400)  # ~0.95 MB in 3 shards: the rest is free
        before = used(root)

        with pytest.raises(StorageError) as raised:
            commit(store, seed=2, rows_per_shard=400)  # the same size again: cannot fit

        message = str(raised.value)
        full = FULL.search(message)
        assert full and Path(full["mount"]) == root, message
        failing = re.search(r"could not write (\S+): ", message)
        assert failing and Path(failing[1]).parent == root / "small/shards/train", message
        assert message.startswith("small/shards[train]: ") and "What to do: free space there" in message
        encoded = synthetic_shard_set(2, 400)
        needed, free = int(full["needed"].replace(",", "")), int(full["free"].replace(",", ""))
        assert len(encoded.files[Path(failing[1]).name]) <= needed and free < needed  # with the margin
        assert used(root) == before, "the failed commit left bytes behind"
        assert store.open(SHARDS_KEY, "train").manifest == previous
        assert store.verify(SHARDS_KEY, "train") is None

        remount(root, f"size={4 * 1024 * 1024}")
        assert commit(store, seed=2, rows_per_shard=400) == encoded.manifest
        assert store.verify(SHARDS_KEY, "train") is None


def committed_files(storage: Path) -> dict[Path, int]:
    """Every file a record names, that is a single-file artifact itself, or that keeps a committed version
    (a hard link of a single file, a copy of a record), with its size."""
    files = {p: p.stat().st_size for p in storage.glob("mini_mnist/*/*.*") if p.suffix in (".gz", ".npy")}
    kept = (p for p in storage.glob("_versions/**/*") if p.is_file() and p.name != ".lock")
    files |= {p: p.stat().st_size for p in kept}
    for record in storage.glob("mini_mnist/shards/*/_manifest.json"):
        files[record] = record.stat().st_size
        for shard in Manifest.from_json(record.read_bytes()).shards:
            files[record.parent / shard.file] = shard.bytes
    return files


def step_failures(home: Path) -> list[dg.DagsterEvent]:
    """The STEP_FAILURE events in the event log of the CLI's instance (what the UI shows)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [
            entry.dagster_event
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            if entry.dagster_event is not None
        ]


@scenario(
    "Storage",
    "The storage filesystem (a real tmpfs) fills up during a first `mnist-assets refresh`: raw_gzip and "
    "idx fit, shards[train] does not",
    "`FAILED mini_mnist/shards[train]: … could not write <path>: No space left on device (… bytes free "
    "on the filesystem mounted at <mount>) … What to do: free space there …` on stderr, in the summary "
    "and as the step failure in the event log, no Dagster wrapper; the checkpoint is blocked; after the "
    "filesystem grows a little, the next refresh rebuilds exactly shards[train], and the checkpoint (written "
    "by its IO manager) fails with the same sentence; grown enough, the next trains exactly the checkpoint",
    "Everything that fit (raw_gzip, idx, shards[test], shards[holdout]); not one byte of the failed commit",
)
def test_a_full_disk_during_refresh_is_reported_plainly_and_repaired_after_space_is_freed(empty_project):
    project = empty_project
    raw = sum(on_disk((project.mirror / name).stat().st_size) for name in MINI_FILENAMES.values())
    arrays = sum(on_disk(128 + array.nbytes) for array in project.arrays.values())
    # room for raw_gzip, idx, shards[test] and shards[holdout] (~140 KB, plus the margin of each write),
    # not for shards[train] (~300 KB)
    with small_filesystem(project.storage, raw + arrays + 280 * 1024) as storage:
        first = project.cli("refresh", "mini_mnist")

        assert first.returncode == 1, first.stderr
        summary = json.loads(first.stdout)
        assert [(s["asset"], s["partition"]) for s in summary["failed"]] == [("mini_mnist/shards", "train")]
        assert [s["asset"] for s in summary["blocked"]] == ["mini_mnist/checkpoint", "mini_mnist/best_model"]
        error = summary["failed"][0]["error"]
        full = FULL.search(error)
        assert full and Path(full["mount"]) == storage, error
        assert error.startswith(
            f"mini_mnist/shards[train]: could not write {storage}/mini_mnist/shards/train/"
        )
        assert "What to do: free space there" in error and "DagsterExecution" not in error
        assert f"FAILED mini_mnist/shards[train]: {error}" in first.stderr
        failures = step_failures(project.directory / "cli_home")
        assert [(e.step_key, e.step_failure_data.user_failure_data.description) for e in failures] == [
            ("mini_mnist__shards", error)  # the UI shows this sentence as the failure, not a wrapper
        ]
        assert failures[0].step_failure_data.error.message.endswith(f"StorageError: {error}\n")
        files = committed_files(storage)
        on_the_disk = {  # leases are bookkeeping of who is building what, not artifact files
            p for p in storage.rglob("*") if p.is_file() and p.name != ".lock" and "_leases" not in p.parts
        }
        assert on_the_disk == set(files), "files no record names"
        by_inode = {p.stat().st_ino: size for p, size in files.items()}  # a hard link takes no more room
        leases = sum(on_disk(p.stat().st_size) for p in (storage / "_leases").rglob("*") if p.is_file())
        assert used(storage) == sum(on_disk(size) for size in by_inode.values()) + leases

        remount(storage, f"size={raw + arrays + 680 * 1024}")  # room for shards[train], not the model
        second = project.cli("refresh", "mini_mnist")

        assert second.returncode == 1, second.stderr
        summary = json.loads(second.stdout)
        assert [(s["asset"], s["partition"]) for s in summary["ran"]] == [("mini_mnist/shards", "train")]
        assert [s["asset"] for s in summary["failed"]] == ["mini_mnist/checkpoint"]
        assert [s["asset"] for s in summary["blocked"]] == ["mini_mnist/best_model"]  # its only candidate
        error = summary["failed"][0]["error"]  # written by the IO manager's handle_output, not the body
        assert re.match(
            rf"mini_mnist/checkpoint\[cnn\]: could not write "
            rf"{re.escape(str(storage))}/mini_mnist/checkpoint/cnn/model-",
            error,
        )
        assert FULL.search(error) and "DagsterExecution" not in error, error
        checkpoint = [e for e in step_failures(project.directory / "cli_home") if "checkpoint" in e.step_key]
        # a StorageError itself, not DagsterExecutionHandleOutputError with the sentence in its cause
        assert [e.step_failure_data.error.cls_name for e in checkpoint] == ["StorageError"]
        assert checkpoint[0].step_failure_data.user_failure_data.description == error
        assert not list(storage.glob("mini_mnist/checkpoint/*/*.keras")) and not list(storage.rglob(".*.tmp"))

        remount(storage, f"size={raw + arrays + 4 * 1024 * 1024}")
        third = project.cli("refresh", "mini_mnist")

        assert third.returncode == 0, third.stderr
        ran = [(s["asset"], s["partition"]) for s in json.loads(third.stdout)["ran"]]
        assert ran == [("mini_mnist/checkpoint", "cnn"), ("mini_mnist/best_model", None)]
        verified = project.cli("refresh", "mini_mnist", "--verify")  # every byte of every artifact
        assert verified.returncode == 0 and json.loads(verified.stdout)["ran"] == [], verified.stderr


@scenario(
    "Storage",
    "The storage filesystem is read-only (a real tmpfs remounted `ro`) during `mnist-assets refresh`",
    "Each raw_gzip partition fails with `could not write <path>: Read-only file system … What to do: "
    "remount that filesystem read-write or point MNIST_ASSETS_STORAGE at writable storage`; what is "
    "built from them is blocked",
    "Nothing is written; the mirror is not blamed",
)
def test_a_read_only_storage_says_so_for_each_write(empty_project):
    project = empty_project
    with small_filesystem(project.storage, 1024 * 1024) as storage:
        remount(storage, "ro")  # root ignores file permissions, not a read-only mount
        refreshed = project.cli("refresh", "mini_mnist")

        assert refreshed.returncode == 1, refreshed.stderr
        summary = json.loads(refreshed.stdout)
        failed = {s["partition"]: s["error"] for s in summary["failed"]}
        assert set(failed) == set(MINI_FILENAMES) and {s["asset"] for s in summary["failed"]} == {
            "mini_mnist/raw_gzip"
        }
        for key, error in failed.items():
            assert error == (
                f"mini_mnist/raw_gzip[{key}]: could not write {storage}/mini_mnist/raw_gzip/{key}.gz: "
                "Read-only file system. The previous version, if any, is kept. What to do: remount that "
                "filesystem read-write or point MNIST_ASSETS_STORAGE at writable storage, then refresh again."
            )
            assert f"FAILED mini_mnist/raw_gzip[{key}]: {error}" in refreshed.stderr
        assert {s["asset"] for s in summary["blocked"]} == {
            "mini_mnist/idx",
            "mini_mnist/shards",
            "mini_mnist/checkpoint",
            "mini_mnist/best_model",
        }
        assert list(storage.iterdir()) == []


@scenario(
    "Storage",
    "The disk fills up while a download streams into storage (size unknown beforehand; a real tmpfs)",
    "StorageError: `could not write <path>: No space left on device (M bytes free on the filesystem "
    "mounted at <mount>)` and what to do",
    "The previous file, byte for byte; the partial download is removed (disk usage back to what it was)",
)
def test_a_disk_filling_up_mid_download_keeps_the_previous_file(tmp_path):
    with small_filesystem(tmp_path / "small", 512 * 1024) as root:
        store, key = GzipIOManager(root=str(root)), dg.AssetKey(["small", "raw_gzip"])
        previous = os.urandom(100_000)
        with store.staged(key, "train-images") as staged:
            staged.file.write(previous)
            staged.commit()
        before = used(root)

        with pytest.raises(StorageError) as raised, store.staged(key, "train-images") as staged:
            for _ in range(100):  # 1.6 MB in chunks, as a download arrives: the disk fills on the way
                staged.file.write(os.urandom(16 * 1024))
                staged.file.flush()

        path = root / "small/raw_gzip/train-images.gz"
        message = str(raised.value)
        assert message.startswith(f"small/raw_gzip[train-images]: could not write {path}: "), message
        full = FULL.search(message)
        assert full and full["needed"] is None and Path(full["mount"]) == root, message
        assert path.read_bytes() == previous
        assert used(root) == before, "the partial download was left behind"


@scenario(
    "Storage",
    "The storage root is deleted while an idx array is being written (before its commit)",
    "StorageError: `could not write <path>: No such file or directory … What to do: a directory on "
    "the way vanished (storage root deleted or unmounted?): restore it, then refresh again`",
    "Nothing half-written; the next write recreates the directories",
)
def test_a_storage_root_deleted_mid_write_is_named(tmp_path):
    store, key = NumpyIOManager(root=str(tmp_path / "root")), dg.AssetKey(["small", "idx"])
    with pytest.raises(StorageError) as raised, store.staged(key, "train-labels") as staged:
        staged.file.write(b"half an array")
        shutil.rmtree(tmp_path / "root")
        staged.commit()

    path = tmp_path / "root/small/idx/train-labels.npy"
    assert str(raised.value) == (
        f"small/idx[train-labels]: could not write {path}: No such file or directory. The previous "
        "version, if any, is kept. What to do: a directory on the way vanished (storage root deleted "
        "or unmounted?): restore it, then refresh again."
    )
    assert not (tmp_path / "root").exists()
    with store.staged(key, "train-labels") as staged:
        staged.file.write(b"whole")
        staged.commit()
    assert path.read_bytes() == b"whole"
