"""Crashes and concurrency: real processes killed with SIGKILL mid-write, real concurrent writers.

Children run small scripts against the real IO managers on a real temporary directory; the kill
is delivered from inside the write path at a chosen point, so the crash lands exactly there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest

from mnist_assets import shards
from mnist_assets.manifest import TrainedCheckpoint
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import KerasIOManager, ShardSetIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import REPO

SHARDS_KEY = dg.AssetKey(["crash", "shards"])
CHECKPOINT_KEY = dg.AssetKey(["crash", "checkpoint"])


def synthetic_shard_set(seed: int, rows_per_shard: int) -> shards.EncodedShardSet:
    """A small train split of random digits; seed and shard size make each version distinct."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (1200, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 1200, dtype=np.uint8)
    options = shards.ShardOptions(seed=seed, rows_per_shard=rows_per_shard)
    sources = {"train-images": f"{seed:064x}", "train-labels": f"{seed + 1:064x}"}
    return shards.encode("crash", "train", images, labels, sources, tuple("0123456789"), options)


def checkpoint_value(seed: int) -> SimpleNamespace:
    """What the checkpoint asset hands its IO manager: model bytes and what training recorded."""
    body = np.random.default_rng(seed).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    record = TrainedCheckpoint(
        metrics={"holdout": {"accuracy": 0.5, "loss": 1.0}},
        epochs=1,
        training_seconds=0.1,
        parameter_count=10,
        config={"seed": seed},
        shards_root_sha256={},
    )
    return SimpleNamespace(keras_bytes=body, record=record)


def run_child(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kill_during_store(store: str, key: str, value: str, kill_at_write: int, partial: bool):
    """Run ``store`` in a child that SIGKILLs itself on its ``kill_at_write``-th atomic write,
    after writing half of that file's temporary copy (``partial``) or before writing it at all."""
    return run_child(f"""
        import os, signal
        import dagster as dg
        from mnist_assets.storage import local
        from mnist_assets_tests.test_faults_crashes import *

        calls = 0
        real_write = local.write_atomic
        def dying_write(path, data):
            global calls
            calls += 1
            if calls == {kill_at_write}:
                if {partial}:
                    (path.parent / f".{{path.name}}.dying.tmp").write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, data)
        local.write_atomic = dying_write
        store = {store}
        store.store(store.asset_dir({key}), None, {value})
    """)


def stored_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != ".lock"}


KILL_POINTS = {
    "after-first-shard": (2, False),
    "mid-shard-file": (2, True),
    "before-the-manifest": (4, True),
}


@scenario(
    "Crashes and concurrency",
    "SIGKILL during a shard-set write (after a shard, mid-file, before the manifest)",
    "The run dies; the next load still returns the previous set; "
    "the next write repairs and sweeps temp files",
    "The previous shard set, whole and verified",
)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_during_a_shard_set_write_keeps_the_previous_set(tmp_path, point):
    store = ShardSetIOManager(root=str(tmp_path), keep_versions=1)  # old sets not kept for rollback
    directory = store.asset_dir(SHARDS_KEY)
    good = synthetic_shard_set(1, 400)  # 3 shards: writes 1-3 are shards, 4 is the manifest
    store.store(directory, None, good)
    before = stored_files(tmp_path / "crash/shards/all")

    kill_at, partial = KILL_POINTS[point]
    child = kill_during_store(
        f"ShardSetIOManager(root={str(tmp_path)!r})",
        "SHARDS_KEY",
        "synthetic_shard_set(2, 500)",
        kill_at,
        partial,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert store.read(directory, None, "crash/shards").manifest == good.manifest
    assert store.exists(SHARDS_KEY, None)
    replacement = synthetic_shard_set(2, 500)
    store.store(directory, None, replacement)
    after = stored_files(tmp_path / "crash/shards/all")
    assert not any(name.endswith(".tmp") for name in after)
    assert set(after) == {*replacement.files, "_manifest.json"} and after != before
    assert store.read(directory, None, "crash/shards").manifest == replacement.manifest


@scenario(
    "Crashes and concurrency",
    "SIGKILL while a checkpoint is being saved",
    "The run dies; the last good checkpoint still loads and verifies; the next save replaces it whole",
    "The last good checkpoint",
)
@pytest.mark.parametrize("partial", [False, True], ids=["before-model-file", "mid-model-file"])
def test_sigkill_during_a_checkpoint_save_keeps_the_last_good_one(tmp_path, partial):
    store = KerasIOManager(root=str(tmp_path), keep_versions=1)  # old models not kept for rollback
    directory = store.asset_dir(CHECKPOINT_KEY)
    store.store(directory, None, checkpoint_value(1))

    child = kill_during_store(
        f"KerasIOManager(root={str(tmp_path)!r})", "CHECKPOINT_KEY", "checkpoint_value(2)", 1, partial
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    kept = store.read(directory, None, "crash/checkpoint")
    assert kept.keras_bytes == checkpoint_value(1).keras_bytes and kept.record.config["seed"] == 1
    store.store(directory, None, checkpoint_value(2))
    assert store.read(directory, None, "crash/checkpoint").record.config["seed"] == 2
    assert [p.suffix for p in (tmp_path / "crash/checkpoint").iterdir() if p.name != ".lock"] in (
        [".json", ".keras"],
        [".keras", ".json"],
    )


@scenario(
    "Crashes and concurrency",
    "A bit flipped in a stored checkpoint",
    "Loading fails naming the file and its recorded sha256, and says to materialize again",
    "Nothing damaged is ever returned",
)
def test_a_flipped_bit_in_a_stored_checkpoint_is_detected_on_load(tmp_path):
    store = KerasIOManager(root=str(tmp_path))
    directory = store.asset_dir(CHECKPOINT_KEY)
    store.store(directory, None, checkpoint_value(1))
    model = next((tmp_path / "crash/checkpoint").glob("model-*.keras"))
    data = bytearray(model.read_bytes())
    data[1000] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(
        StorageError, match=r"crash/checkpoint: .*model-.*\.keras does not match its recorded sha256"
    ):
        store.read(directory, None, "crash/checkpoint")


@scenario(
    "Crashes and concurrency",
    "Bits flipped in a built project's shard and checkpoint",
    "`refresh` trusts sizes and runs nothing; "
    "`refresh --verify` names the damage and rebuilds exactly those two",
    "Everything undamaged",
)
def test_refresh_verify_finds_damaged_artifacts_and_rebuilds_only_them(project):
    shard = next((project.storage / "mini_mnist/shards/test").glob("part-*.parquet"))
    model = next((project.storage / "mini_mnist/checkpoint/cnn").glob("model-*.keras"))
    for path in (shard, model):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(data))

    _, delta = project.refresh()
    assert delta == Counter()
    summary, delta = project.refresh(verify=True)

    # the retrain reproduces the model to the byte (same shards, settings, code): the choice stays fresh
    assert delta == Counter({("shards", "test"): 1, ("checkpoint", "cnn"): 1})
    causes = {(s.asset, s.partition): s.causes[0] for s in summary.ran}
    assert (
        "damaged" in causes[("mini_mnist/shards", "test")]
        and shard.name in causes[("mini_mnist/shards", "test")]
    )
    assert "does not match its recorded sha256" in causes[("mini_mnist/checkpoint", "cnn")]
    _, delta = project.refresh(verify=True)
    assert delta == Counter()


WRITER = """
    from mnist_assets.storage.io_managers import ShardSetIOManager
    from mnist_assets_tests.test_faults_crashes import *
    store = ShardSetIOManager(root={root!r}, keep_versions=1)  # only the winner's files stay
    value = synthetic_shard_set({seed}, {rows})
    for _ in range(15):
        store.store(store.asset_dir(SHARDS_KEY), None, value)
"""

READER = """
    import json, time
    from mnist_assets.storage.io_managers import ShardSetIOManager
    from mnist_assets_tests.test_faults_crashes import *
    store = ShardSetIOManager(root={root!r})
    seen, errors, deadline = set(), [], time.monotonic() + 60
    while time.monotonic() < deadline and not __import__("os").path.exists({done!r}):
        try:
            seen.add(store.read(store.asset_dir(SHARDS_KEY), None, "crash/shards").manifest.root_sha256)
        except Exception as error:
            errors.append(repr(error))
    print(json.dumps({{"seen": sorted(seen), "errors": errors[:5]}}))
"""


@scenario(
    "Crashes and concurrency",
    "Two processes writing the same shard set at once, a third reading",
    "Both writes succeed; every read returns one complete, verified version",
    "One of the two versions, whole",
)
def test_concurrent_writers_never_mix_versions_and_readers_never_see_a_partial_set(tmp_path):
    store = ShardSetIOManager(root=str(tmp_path))
    store.store(store.asset_dir(SHARDS_KEY), None, synthetic_shard_set(3, 400))
    done = tmp_path / "writers-done"

    def launch(script: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    reader = launch(READER.format(root=str(tmp_path), done=str(done)))
    writers = [
        launch(WRITER.format(root=str(tmp_path), seed=seed, rows=rows)) for seed, rows in ((3, 400), (4, 300))
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err
    done.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    report = json.loads(out)

    versions = {synthetic_shard_set(s, r).manifest.root_sha256 for s, r in ((3, 400), (4, 300))}
    assert report["errors"] == []
    assert set(report["seen"]) <= versions
    final = store.read(store.asset_dir(SHARDS_KEY), None, "crash/shards")
    assert final.manifest.root_sha256 in versions
    names = {p.name for p in (tmp_path / "crash/shards/all").iterdir()} - {".lock"}
    assert names == {*(s.file for s in final.manifest.shards), "_manifest.json"}


KILLED_REFRESH = """
    import json, os, signal
    import dagster as dg
    from dagster import deserialize_value
    from mnist_assets.storage import local
    from mnist_assets.catalog import parse_catalog
    from mnist_assets.definitions import build_definitions
    from mnist_assets.rebuild.refresh import refresh

    real_write = local.write_atomic
    def dying_write(path, data):
        if path.suffix == ".keras":  # half of the new model on disk, then the machine "loses power"
            (path.parent / f".{{path.name}}.dying.tmp").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)
    local.write_atomic = dying_write

    instance = dg.DagsterInstance.from_ref(deserialize_value({ref!r}))
    defs = build_definitions(parse_catalog(json.loads({document!r})), {root!r})
    refresh(defs, instance, ["mini_mnist"], log=lambda message: None)
"""


def kill_a_refresh_mid_checkpoint(project) -> str:
    """A real refresh process retraining the checkpoint, SIGKILLed while it saves; the run it left STARTED."""
    from dagster import serialize_value

    project.dataset["training"]["epochs"] = 2
    child = run_child(
        KILLED_REFRESH.format(
            ref=serialize_value(project.instance.get_ref()),
            document=json.dumps(project.document),
            root=str(project.storage),
        )
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    started = project.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert len(started) == 1
    return started[0].dagster_run.run_id


@scenario(
    "Crashes and concurrency",
    "SIGKILL of a `mnist-assets refresh` process while it saves a retrained checkpoint",
    "The run dies; the next refresh still finds the checkpoint stale and retrains it; temp files swept",
    "The last good checkpoint, loadable until the repair lands",
)
def test_a_refresh_killed_while_saving_the_checkpoint_is_repaired_by_the_next_one(project):

    directory = project.storage / "mini_mnist/checkpoint/cnn"
    good = (directory / "checkpoint.json").read_bytes()
    kill_a_refresh_mid_checkpoint(project)
    assert (directory / "checkpoint.json").read_bytes() == good
    assert any(p.name.endswith(".dying.tmp") for p in directory.iterdir())
    store = KerasIOManager(root=str(project.storage))
    assert (
        store.read(store.asset_dir(dg.AssetKey(["mini_mnist", "checkpoint"])), "cnn", "c").record.epochs == 3
    )

    summary, delta = project.refresh()

    assert delta == Counter({("checkpoint", "cnn"): 1, ("best_model", None): 1})
    assert summary.ran[0].causes == ["has a new dependency data version (mini_mnist/model_configs[cnn])"]
    repaired = store.read(store.asset_dir(dg.AssetKey(["mini_mnist", "checkpoint"])), "cnn", "c")
    assert repaired.record.epochs == 2
    assert not any(p.name.endswith(".tmp") for p in directory.iterdir())


def test_exists_checks_the_recorded_files_and_sizes_and_reads_records_without_sizes(tmp_path):
    store = KerasIOManager(root=str(tmp_path))
    store.store(store.asset_dir(CHECKPOINT_KEY), None, checkpoint_value(1))
    record_path = tmp_path / "crash/checkpoint/checkpoint.json"
    model = next((tmp_path / "crash/checkpoint").glob("model-*.keras"))
    good = model.read_bytes()
    assert store.exists(CHECKPOINT_KEY, None)

    model.write_bytes(good[:-1])  # truncated in place: the recorded size no longer matches
    assert not store.exists(CHECKPOINT_KEY, None)

    model.write_bytes(good)
    record = json.loads(record_path.read_bytes())
    del record["bytes"]  # a record written before sizes were recorded: presence is all it can say
    record_path.write_text(json.dumps(record))
    assert store.exists(CHECKPOINT_KEY, None)
    model.unlink()
    assert not store.exists(CHECKPOINT_KEY, None)
