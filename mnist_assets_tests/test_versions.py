"""Kept versions: retention, history, rollback (verified, recorded so staleness stays true) and gc."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from mnist_assets import history, loader
from mnist_assets.manifest import Manifest
from mnist_assets.storage import versions
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import KerasIOManager, NumpyIOManager, ShardSetIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.test_faults_crashes import checkpoint_value, synthetic_shard_set

CHECKPOINT = dg.AssetKey(["v", "checkpoint"])
SHARDS = dg.AssetKey(["v", "shards"])


def _commit_checkpoints(store: KerasIOManager, seeds) -> list[str]:
    directory = store.asset_dir(CHECKPOINT)
    return [store.store(directory, None, checkpoint_value(seed))["version"] for seed in seeds]


def _models(directory) -> set[str]:
    return {p.name for p in directory.glob("model-*.keras")}


def test_retention_keeps_exactly_the_last_n_versions_and_the_files_they_name(tmp_path):
    store = KerasIOManager(root=str(tmp_path), keep_versions=2)
    ids = _commit_checkpoints(store, [1, 2, 3, 4])
    artifact = store.artifact(CHECKPOINT, None)

    assert ids == sorted(ids) and len(set(ids)) == 4  # ids sort by commit time
    assert artifact.versions() == ids[-2:]
    assert artifact.current_version() == ids[-1]
    named = {n for v in ids[-2:] for n in store.record_kind.digests(artifact.path_of(v).read_bytes())}
    assert len(named) == 2
    assert _models(tmp_path / "v/checkpoint") == artifact.named_by_current()  # the current model only
    assert _models(tmp_path / "_versions/v/checkpoint/files") == named - artifact.named_by_current()
    assert all(versions.verify(artifact, v) is None for v in ids[-2:])


def test_single_file_versions_are_hard_links_and_roll_back_whole(tmp_path):
    store = NumpyIOManager(root=str(tmp_path), keep_versions=2)
    key = dg.AssetKey(["v", "idx"])
    directory = store.asset_dir(key)
    ids = [store.store(directory, "labels", np.full(50, value, np.uint8))["version"] for value in (1, 2, 3)]
    artifact = store.artifact(key, "labels")

    assert artifact.versions() == ids[1:]
    kept = [artifact.path_of(v) for v in ids[1:]]
    assert os.path.samefile(kept[-1].path, artifact.current.path)  # no extra bytes: one inode
    assert not os.path.samefile(kept[0].path, artifact.current.path)

    assert versions.rollback(artifact, ids[1]) == ids[2]
    np.testing.assert_array_equal(store.read(directory, "labels", "v/idx"), np.full(50, 2, np.uint8))
    assert artifact.current_version() == ids[1] and artifact.versions() == ids[1:]


def test_the_current_version_stays_after_a_rollback_whatever_the_retention(tmp_path):
    ids = _commit_checkpoints(KerasIOManager(root=str(tmp_path), keep_versions=2), [1, 2, 3])
    narrow = KerasIOManager(root=str(tmp_path), keep_versions=1)
    artifact = narrow.artifact(CHECKPOINT, None)
    versions.rollback(artifact, ids[1])  # the older kept one is current now

    removed = versions.collect(artifact, dry_run=False, grace_seconds=3600)

    assert removed == []  # ids[2] is the newest (retention 1), ids[1] is current
    assert artifact.versions() == ids[1:]
    fetched = narrow.read(narrow.asset_dir(CHECKPOINT), None, "v/checkpoint")
    assert fetched.keras_bytes == checkpoint_value(2).keras_bytes


def test_a_damaged_version_is_refused_and_nothing_changes(tmp_path):
    store = KerasIOManager(root=str(tmp_path))
    ids = _commit_checkpoints(store, [1, 2])
    artifact = store.artifact(CHECKPOINT, None)
    old = artifact.files_dir / store.record_kind.digests(artifact.path_of(ids[0]).read_bytes()).popitem()[0]
    damaged = bytearray(old.read_bytes())
    damaged[1000] ^= 0xFF
    old.write_bytes(bytes(damaged))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}

    with pytest.raises(
        versions.VersionError, match=rf"{ids[0]}.*does not match its recorded sha256.*refusing"
    ):
        versions.rollback(artifact, ids[0])

    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert artifact.current_version() == ids[1]


def test_gc_dry_run_lists_what_gc_then_deletes_and_nothing_a_kept_version_names(tmp_path):
    ids = _commit_checkpoints(KerasIOManager(root=str(tmp_path), keep_versions=3), [1, 2, 3])
    store = KerasIOManager(root=str(tmp_path), keep_versions=1)
    artifact = store.artifact(CHECKPOINT, None)
    directory = tmp_path / "v/checkpoint"
    (directory / "model-0123456789abcdef.keras").write_bytes(b"left by nobody")
    dead = directory / ".checkpoint.json.0a1b.tmp"
    dead.write_bytes(b"a writer that died")
    files_before = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    planned = versions.collect(artifact, dry_run=True, grace_seconds=3600)

    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files_before
    deleted = versions.collect(artifact, dry_run=False, grace_seconds=3600)
    assert deleted == planned
    assert {r.path for r in deleted} == {
        str(artifact.path_of(ids[0])),
        str(artifact.path_of(ids[1])),
        str(directory / "model-0123456789abcdef.keras"),
        str(dead),
        *(str(artifact.files_dir / f"model-{checkpoint_digest(seed)}.keras") for seed in (1, 2)),
    }
    assert all(r.bytes > 0 for r in deleted)
    assert artifact.versions() == ids[2:] and _models(directory) == {f"model-{checkpoint_digest(3)}.keras"}
    assert (
        store.read(store.asset_dir(CHECKPOINT), None, "v/checkpoint").keras_bytes
        == checkpoint_value(3).keras_bytes
    )
    assert versions.collect(artifact, dry_run=True, grace_seconds=3600) == []


def checkpoint_digest(seed: int) -> str:
    from mnist_assets import hashing

    return hashing.sha256(checkpoint_value(seed).keras_bytes)[:16]


WRITER = """
import sys
from mnist_assets.storage.io_managers import ShardSetIOManager
from mnist_assets_tests.test_faults_crashes import synthetic_shard_set
import dagster as dg

store = ShardSetIOManager(root=sys.argv[1], keep_versions=2)
key = dg.AssetKey(["v", "shards"])
for seed in range(int(sys.argv[2])):
    value = synthetic_shard_set(seed, 300 + 50 * (seed % 3))
    store.store(store.asset_dir(key), "train", value)
    assert store.verify(key, "train") is None
    print(seed, flush=True)
"""


def test_gc_while_a_writer_commits_removes_only_what_no_kept_version_names(tmp_path):
    store = ShardSetIOManager(root=str(tmp_path), keep_versions=2)
    artifact = store.artifact(SHARDS, "train")
    store.store(store.asset_dir(SHARDS), "train", synthetic_shard_set(100, 400))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "12"], stdout=subprocess.PIPE, text=True
    )
    passes, removed = 0, []
    while writer.poll() is None or passes == 0:
        removed += versions.collect(artifact, dry_run=False, grace_seconds=3600)
        with artifact.lock():  # between commits every kept version is whole: gc took no file one names
            for version in artifact.versions():
                assert versions.verify(artifact, version) is None, version
        passes += 1
    out, _ = writer.communicate(timeout=120)

    assert writer.returncode == 0 and out.split() == [str(s) for s in range(12)]
    assert store.verify(SHARDS, "train") is None
    final = store.read(store.asset_dir(SHARDS), "train", "v/shards[train]")
    assert final.manifest == synthetic_shard_set(11, 300 + 50 * 2).manifest
    assert len(artifact.versions()) == 2 and passes > 1
    assert versions.collect(artifact, dry_run=True, grace_seconds=3600) == []
    assert {p.name for p in (tmp_path / "v/shards/train").glob("part-*")} == artifact.named_by_current()
    assert {p.name for p in artifact.files_dir.glob("part-*")} == (
        artifact.named_by_kept() - artifact.named_by_current()
    )


def _materialize(project, asset: str, partition: str | None, config: dict | None = None):
    defs = project.defs()
    key = dg.AssetKey(["mini_mnist", asset])
    op = defs.resolve_assets_def(key).node_def.name
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[key],
        partition_key=partition,
        instance=project.instance,
        run_config={"ops": {op: {"config": config or {}}}},
    )
    assert result.success


def _ran(project) -> list[str]:
    summary, _ = project.refresh()
    assert not summary.failed, summary.failed
    return [step.label for step in summary.ran]


def _plan(project) -> list[str]:
    summary, _ = project.refresh(dry_run=True)
    return [step.label for step in summary.ran]


def test_rollback_restores_verified_versions_and_refresh_does_exactly_what_staleness_says(project):
    defs = project.defs()
    shards = history.target(defs, "mini_mnist", "shards", "train")
    checkpoint = history.target(defs, "mini_mnist", "checkpoint", "cnn")
    [s1] = history.history(project.instance, shards)
    [c1] = history.history(project.instance, checkpoint)
    assert s1.current and s1.data_version != history.UNKNOWN and s1.metrics["rows"] > 0
    assert {"test_accuracy", "holdout_accuracy", "parameter_count"} <= set(c1.metrics)

    _materialize(project, "shards", "train", {"rows_per_shard": 700})  # other files, other data version
    # what reads it, and not more (the choice among checkpoints reads the new one)
    assert _ran(project) == ["mini_mnist/checkpoint[cnn]", "mini_mnist/best_model"]
    s2, old_s1 = history.history(project.instance, shards)
    assert old_s1.version == s1.version and s2.data_version != s1.data_version and s2.current
    c2, _ = history.history(project.instance, checkpoint)

    # the checkpoint trained on S1, back while S2 is current: stale, truly
    history.rollback(project.instance, checkpoint, c1.version[:-4])
    assert _plan(project) == ["mini_mnist/checkpoint[cnn]", "mini_mnist/best_model"]
    # S1 back (by a prefix of its data version): the checkpoint is trained on the current shards again
    done = history.rollback(project.instance, shards, s1.data_version[:10])
    assert done["version"] == s1.version and done["rolled_back_from"] == s2.version
    assert _plan(project) == ["mini_mnist/best_model"]  # it ranked the checkpoint rolled away from
    with loader.load("mini_mnist", "train", storage=str(project.storage)) as loaded:
        assert loaded.shard_set.manifest.root_sha256 == _root(project, s1.version)
    keras = KerasIOManager(root=str(project.storage))
    stored = keras.read(keras.asset_dir(checkpoint.key), "cnn", "mini_mnist/checkpoint[cnn]")
    assert stored.record.shards_root_sha256["train"] == _root(project, s1.version)

    # S2 back: the checkpoint reads it, so it retrains, and reproduces C2, the model best_model last
    # ranked: C2's kept version is current again (no second copy of it) and best_model stays fresh
    history.rollback(project.instance, shards, s2.version)
    assert _ran(project) == ["mini_mnist/checkpoint[cnn]"]
    rows = history.history(project.instance, shards)
    assert [(r.version, r.current) for r in rows] == [(s2.version, True), (s1.version, False)]
    rows = history.history(project.instance, checkpoint)
    assert [(r.version, r.current) for r in rows] == [(c2.version, True), (c1.version, False)]
    assert rows[0].data_version == c2.data_version


def _root(project, version: str) -> str:
    path = project.storage / "_versions/mini_mnist/shards/train" / f"{version}.json"
    return json.loads(path.read_text())["root_sha256"]


def test_cli_history_lists_versions_whose_events_are_gone_and_gc_dry_run_matches_gc(project):
    keras = KerasIOManager(root=str(project.storage), keep_versions=1)
    artifact = keras.artifact(dg.AssetKey(["mini_mnist", "checkpoint"]), "cnn")
    [only] = artifact.versions()

    listed = project.cli(
        "history", "mini_mnist", "checkpoint", "cnn", "--json"
    )  # the CLI's own, empty instance
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {
            "version": only,
            "committed_at": versions.committed_at(only).isoformat(timespec="seconds"),
            "data_version": "unknown",
            "current": True,
            "metrics": {},
        }
    ]
    refused = project.cli("rollback", "mini_mnist", "checkpoint", "cnn", "--to", only[:8])
    assert refused.returncode == 2
    assert "no materialization left in the event log" in refused.stderr and only in refused.stderr

    stray = project.storage / "mini_mnist/checkpoint/cnn/model-00000000000000ff.keras"
    stray.write_bytes(b"x" * 1234)
    dry = project.cli("gc", "mini_mnist", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert stray.exists()
    real = project.cli("gc", "mini_mnist")
    assert real.returncode == 0 and not stray.exists()
    assert dry.stdout.replace("would delete", "deleted") == real.stdout
    assert f"1234 B  {stray}" in real.stdout and "deleted 1 files, 1234 bytes in total" in real.stdout
    bad = project.cli("history", "mini_mnist", "shards")
    assert bad.returncode == 2 and "name one of train, test, holdout" in bad.stderr


def test_a_materialization_names_its_version(project):
    for asset, partition in (("raw_gzip", "train-images"), ("idx", "train-labels"), ("shards", "test")):
        record = project.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["mini_mnist", asset]), asset_partitions=[partition]),
            limit=1,
        ).records[0]
        version = record.asset_materialization.metadata["version"].value
        store = history.target(project.defs(), "mini_mnist", asset, partition).store
        assert store.artifact(dg.AssetKey(["mini_mnist", asset]), partition).current_version() == version


def test_tensorboard_logs_are_committed_with_their_checkpoint_and_go_with_its_version(tmp_path):
    from mnist_assets.training import TrainedModel

    store = KerasIOManager(root=str(tmp_path), keep_versions=1)
    directory = store.asset_dir(CHECKPOINT)
    runs = []
    for seed in (1, 2):
        value = checkpoint_value(seed)
        logs = {
            f"train/events.out.tfevents.{seed}.v2": b"e" * seed,
            "validation/events.out.tfevents.1.v2": b"v",
        }
        runs.append(store.store(directory, None, TrainedModel(value.keras_bytes, value.record, logs=logs)))

    first, second = (tmp_path / "v/checkpoint/tensorboard" / checkpoint_digest(s) for s in (1, 2))
    assert runs[1]["tensorboard"].value == str(second)
    assert (second / "train/events.out.tfevents.2.v2").read_bytes() == b"ee"
    assert not first.exists()  # its version went beyond retention: logs and their directories too
    record = store.read(directory, None, "v/checkpoint").record
    assert set(record.logs) == {
        f"tensorboard/{checkpoint_digest(2)}/train/events.out.tfevents.2.v2",
        f"tensorboard/{checkpoint_digest(2)}/validation/events.out.tfevents.1.v2",
    }
    with pytest.raises(StorageError, match="unsafe storage name"):
        store.store(directory, None, TrainedModel(b"x", checkpoint_value(3).record, logs={"../up": b"x"}))


SPLITS = ("train", "test", "holdout")


def _read_unaided(split_dir) -> tuple[int, list[int]]:
    """What the README's DuckDB example reads from a split's directory: rows and source indices."""
    glob = f"{split_dir}/*.parquet"
    [(count,)] = duckdb.sql(f"select count(*) from '{glob}'").fetchall()
    indices = duckdb.sql(f"select source_index from '{glob}' order by source_index").fetchnumpy()
    return count, indices["source_index"].tolist()


def _read_by_manifest(split_dir) -> tuple[int, list[int]]:
    """The current version: the rows and source indices of the files its manifest names."""
    manifest = Manifest.from_json((split_dir / "_manifest.json").read_bytes())
    indices = [
        i for s in manifest.shards for i in pq.read_table(split_dir / s.file)["source_index"].to_pylist()
    ]
    return manifest.rows, sorted(indices)


@scenario(
    "Nothing lost",
    "A change of shard settings in the catalog (seed and rows_per_shard), then a rollback, with the "
    "split directories read unaided (the README's DuckDB glob `shards/train/*.parquet`)",
    "Exactly the current version's rows and source indices in every split, after the change and "
    "after the rollback (before issue 21, one change made it read 3,600 train rows for 1,800)",
    "Every kept version whole under `_versions/`, verified and restorable",
)
def test_a_split_directory_read_unaided_holds_exactly_the_current_rows(empty_project):
    project = empty_project
    directories = {split: project.storage / "mini_mnist/shards" / split for split in SPLITS}
    assert project.cli("refresh", "mini_mnist").returncode == 0
    first = {split: _read_by_manifest(d) for split, d in directories.items()}

    project.dataset["shards"] = {"seed": 5, "rows_per_shard": 700}  # the catalog MNIST_ASSETS_CATALOG names
    changed = project.cli("refresh", "mini_mnist")
    assert changed.returncode == 0, changed.stderr
    second = {split: _read_by_manifest(d) for split, d in directories.items()}
    assert second["train"][0] == 1800 and second["train"] != first["train"]  # another seeded tenth held out
    assert {split: _read_unaided(d) for split, d in directories.items()} == second

    [old] = [
        row
        for row in json.loads(project.cli("history", "mini_mnist", "shards", "train", "--json").stdout)
        if not row["current"]
    ]
    rolled = project.cli("rollback", "mini_mnist", "shards", "train", "--to", old["version"])
    assert rolled.returncode == 0, rolled.stderr
    assert {split: _read_unaided(d) for split, d in directories.items()} == {
        **second,
        "train": first["train"],
    }
    assert _read_by_manifest(directories["train"]) == first["train"]
    artifact = ShardSetIOManager(root=str(project.storage)).artifact(SHARDS_OF_MINI, "train")
    assert [versions.verify(artifact, v) for v in artifact.versions()] == [None, None]


SHARDS_OF_MINI = dg.AssetKey(["mini_mnist", "shards"])


def test_storage_of_the_old_layout_is_moved_out_by_gc_and_rollback_and_loses_nothing(tmp_path):
    store = ShardSetIOManager(root=str(tmp_path), keep_versions=3)
    sets = [synthetic_shard_set(seed, 300 + 100 * seed) for seed in (1, 2)]
    ids = [store.store(store.asset_dir(SHARDS), "train", encoded)["version"] for encoded in sets]
    artifact = store.artifact(SHARDS, "train")

    def old_layout():  # as written before kept content files moved out: all beside the current ones
        for path in list(artifact.files_dir.iterdir()):
            os.replace(path, artifact.directory / path.name)
        assert _read_unaided(artifact.directory)[0] == sum(s.manifest.rows for s in sets)

    old_layout()
    assert versions.collect(artifact, dry_run=False, grace_seconds=3600) == []  # moved, not deleted
    assert _read_unaided(artifact.directory) == _read_by_manifest(artifact.directory)
    assert _read_unaided(artifact.directory)[0] == sets[1].manifest.rows

    old_layout()
    assert versions.rollback(artifact, ids[0]) == ids[1]
    assert _read_unaided(artifact.directory) == _read_by_manifest(artifact.directory)
    assert _read_unaided(artifact.directory)[0] == sets[0].manifest.rows
    assert [versions.verify(artifact, v) for v in ids] == [None, None]
    assert {p.name for p in artifact.files_dir.iterdir()} == {s.file for s in sets[1].manifest.shards}
