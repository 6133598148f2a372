"""The small graph on the deployment of issue 13: the instance on PostgreSQL 15, every step in one of two
Celery workers (Redis broker), artifacts on S3 (moto's server) under one prefix all processes share. The
tests of this module run in order on one deployment: a build from nothing, then a worker killed
mid-training."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import dagster as dg
import pytest
from upath import UPath

pytestmark = pytest.mark.deploy

ASSET_PARTITIONS = 4 + 4 + 3 + 1 + 1
REFRESH_SECONDS = 900


def finish(refresh: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = refresh.communicate(timeout=REFRESH_SECONDS)
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"refresh printed no summary (exit {refresh.returncode}):\n{err.decode()[-4000:]}")
    return refresh.returncode, summary, err.decode()


def events(instance: dg.DagsterInstance, event_type: dg.DagsterEventType) -> list[dg.EventLogEntry]:
    """Every ``event_type`` event of the asset runs (not the sources' observations, which ``refresh``
    makes in its own process before it plans)."""
    return [
        entry
        for run in instance.get_runs(dg.RunsFilter(job_name="__ASSET_JOB"))
        for entry in instance.all_logs(run.run_id, of_type=event_type)
    ]


def celery_workers_by_step(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """For each step key, the Celery workers that reported running it (recorded by the worker's task)."""
    found: dict[str, set[str]] = {}
    for entry in events(instance, dg.DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            found.setdefault(entry.step_key, set()).add(metadata["Celery worker"].value)
    return found


def files_under(directory: UPath) -> dict[str, str]:
    """Every object under ``directory`` and its sha256, as the storage holds them now."""
    fs = directory.fs
    fs.invalidate_cache()
    return {key: hashlib.sha256(fs.cat_file(key)).hexdigest() for key in sorted(fs.find(directory.path))}


def test_the_small_graph_runs_on_postgres_with_every_step_in_a_celery_worker(deployment):
    refresh = deployment.refresh()
    code, summary, err = finish(refresh)
    assert code == 0 and not summary["failed"], err[-4000:]
    assert len(summary["ran"]) == ASSET_PARTITIONS

    with deployment.instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        starts = events(instance, dg.DagsterEventType.STEP_START)
        step_keys = {entry.step_key for entry in starts}
        assert len(step_keys) == 5  # raw_gzip, idx, shards, checkpoint, best_model: each in the workers
        # every step ran in a process other than the refresh (which orchestrated) and this test
        assert {entry.dagster_event.pid for entry in starts}.isdisjoint({refresh.pid, os.getpid()})
        workers = celery_workers_by_step(instance)
        assert set(workers) == step_keys, workers
        hosts = {host.split("@")[0] for hosts in workers.values() for host in hosts}
        assert hosts <= set(deployment.workers), hosts
        materializations = events(instance, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert len(materializations) == ASSET_PARTITIONS

    code, again, err = finish(deployment.refresh())
    assert code == 0 and again["ran"] == [] and again["fresh"] == ASSET_PARTITIONS, err[-4000:]


def kill_when_training(deployment, refresh: subprocess.Popen) -> int:
    """SIGKILL the worker process running the checkpoint step once it logged its first epoch."""
    deadline = time.monotonic() + REFRESH_SECONDS
    with deployment.instance() as instance:
        while time.monotonic() < deadline and refresh.poll() is None:
            for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                logs = instance.all_logs(run.run_id)
                training = any(
                    e.step_key and "checkpoint" in e.step_key and "epoch 1/" in e.user_message for e in logs
                )
                for entry in logs:
                    if training and entry.dagster_event and entry.dagster_event.is_step_start:
                        pid = entry.dagster_event.pid
                        os.kill(pid, signal.SIGKILL)
                        return pid
            time.sleep(0.2)
    pytest.fail("the checkpoint step never logged a training epoch")


def test_a_worker_killed_mid_training_fails_clearly_keeps_the_last_checkpoint_then_refresh_repairs_it(
    deployment,
):
    checkpoint = deployment.storage / "mini_mnist" / "checkpoint" / "cnn"
    before = files_under(checkpoint)
    assert before, "the first test built a checkpoint"
    deployment.training["epochs"] = 30  # stale, and long enough to be killed mid-training
    deployment.write_catalog()

    refresh = deployment.refresh()
    killed = kill_when_training(deployment, refresh)
    code, summary, err = finish(refresh)
    assert code == 1, err[-4000:]
    assert [step["asset"] for step in summary["failed"]] == ["mini_mnist/checkpoint"]
    error = summary["failed"][0]["error"]
    assert "Worker exited prematurely: signal 9 (SIGKILL)" in error and 'File "' not in error, error
    assert "mini_mnist__checkpoint" in error, error
    assert files_under(checkpoint) == before  # the last good checkpoint, untouched
    for name, worker in deployment.workers.items():
        assert worker.process.poll() is None and killed not in worker.members(), name

    deployment.training["epochs"] = 2  # back to a short run: the next refresh repairs it
    deployment.write_catalog()
    code, summary, err = finish(deployment.refresh())
    assert code == 0, err[-4000:]
    assert [step["asset"] for step in summary["ran"]] == ["mini_mnist/checkpoint", "mini_mnist/best_model"]
    assert files_under(checkpoint) != before

    code, summary, err = finish(deployment.refresh("--verify"))
    assert code == 0 and summary["ran"] == [] and summary["fresh"] == ASSET_PARTITIONS, err[-4000:]
