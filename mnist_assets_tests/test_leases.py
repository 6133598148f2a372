"""Shared work: a partition another process is building is waited for and reused, not rebuilt.

Real ``mnist-assets refresh`` processes on one storage and one instance, started together or killed
mid-step, and the lease record itself on a real directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
from upath import UPath

from mnist_assets.storage import leases
from mnist_assets_tests.faults import scenario


def start_refresh(project, *args: str, **env: str) -> subprocess.Popen:
    command, environment = project.cli_command("refresh", "mini_mnist", *args)
    return subprocess.Popen(
        command, env={**environment, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[dict, str]:
    """The refresh's summary and its stderr, once it exited 0."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out), err


def until_waiting(process: subprocess.Popen) -> str:
    """The refresh's stderr up to the line saying it waits for another process (or its end)."""
    said = ""
    while line := process.stderr.readline():
        said += line
        if "is building it" in line:
            break
    return said


def labels(steps: list[dict]) -> set[str]:
    return {step["asset"] + (f"[{step['partition']}]" if step["partition"] else "") for step in steps}


@scenario(
    "Crashes and concurrency",
    "Two `mnist-assets refresh` of one dataset started 1 s apart",
    "The second prints `waiting for <dataset>: … is building it`, waits for the first to end, then runs "
    "nothing; both exit 0",
    "Each step computed once; the second reuses the first's results",
)
def test_a_second_refresh_waits_for_the_first_and_runs_nothing(empty_project):
    first = start_refresh(empty_project)
    time.sleep(1)
    second = start_refresh(empty_project)
    (first_summary, first_err), (second_summary, second_err) = finish(first), finish(second)

    both = (first_summary["ran"], second_summary["ran"])
    assert not labels(both[0]) & labels(both[1]), "a step ran in both refreshes"
    # the one that takes the dataset's refresh lease first builds all (under load, maybe the second)
    assert sorted(map(len, both)) == [0, 13], [labels(ran) for ran in both]
    assert "is building it" in (second_err if both[0] else first_err)
    verified, _ = finish(start_refresh(empty_project, "--verify"))
    assert verified["ran"] == [] and verified["failed"] == []


@scenario(
    "Crashes and concurrency",
    "A refresh SIGKILLed mid-step (a slow download) while another refresh of the dataset waits for it",
    "The waiting refresh takes the lease over once it expires (`MNIST_ASSETS_LEASE_SECONDS`) and "
    "completes; exit 0",
    "What the holder committed before it died; the survivor builds the rest; `refresh --verify` finds "
    "nothing to do",
)
def test_a_killed_holder_is_taken_over_after_its_lease_expires(empty_project, http_server):
    prefix = empty_project.url.split("/")[-2]
    for name in empty_project.dataset["files"].values():
        http_server.faults[f"/{prefix}/{name['filename']}"] = "slow"
    http_server.slow_seconds = 0.5
    try:
        holder = start_refresh(empty_project, MNIST_ASSETS_LEASE_SECONDS="2")
        lease = empty_project.storage / "_leases/mini_mnist/raw_gzip"
        deadline = time.monotonic() + 60
        while not (lease.is_dir() and any(p.name[0] != "." for p in lease.iterdir())):
            assert time.monotonic() < deadline and holder.poll() is None, "the holder never took a lease"
            time.sleep(0.1)
        waiter = start_refresh(empty_project, MNIST_ASSETS_LEASE_SECONDS="2")
        said = until_waiting(waiter)
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        http_server.slow_seconds = 0.01
        for path in [p for p in http_server.faults if p.startswith(f"/{prefix}/")]:
            del http_server.faults[path]

    summary, _ = finish(waiter)
    assert "waiting for mini_mnist: mnist-assets refresh in pid" in said
    assert summary["failed"] == [], summary["failed"]
    assert len(summary["ran"]) + summary["fresh"] == 13  # fresh: what the holder committed before dying
    verified, _ = finish(start_refresh(empty_project, "--verify"))
    assert verified["ran"] == [] and verified["failed"] == []


@scenario(
    "Crashes and concurrency",
    "`dagster asset materialize` (as a UI click or the sensor) of a partition a refresh is building",
    "Its step prints `waiting for <asset>[<partition>]: mnist-assets refresh … is building it`, waits, "
    "then reuses the refresh's result (`reused run …'s result`); exit 0",
    "The file downloaded once; the run's materialization repeats the refresh's and names its run",
)
def test_a_run_launched_beside_a_refresh_waits_and_reuses_its_result(empty_project, http_server):
    prefix = empty_project.url.split("/")[-2]
    path = f"/{prefix}/{empty_project.dataset['files']['train-images']['filename']}"
    http_server.faults[path], http_server.slow_seconds = "slow", 0.5  # 319 KB: 5 chunks, 2.5 s
    try:
        refresh = start_refresh(empty_project)
        lease = leases.Lease(
            UPath(empty_project.storage) / "_leases/mini_mnist/raw_gzip/train-images", 30, ""
        )
        deadline = time.monotonic() + 60
        while (holder := lease.holder()[0]) is None or not holder.live(time.time()):
            assert time.monotonic() < deadline and refresh.poll() is None, "the refresh never took it"
            time.sleep(0.05)
        command, env = empty_project.cli_command()
        materialize = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "mnist_assets"]
            + ["--select", "mini_mnist/raw_gzip", "--partition", "train-images"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        finish(refresh)
    finally:
        http_server.slow_seconds = 0.01
        del http_server.faults[path]

    assert materialize.returncode == 0, materialize.stderr[-3000:]
    said = materialize.stderr
    assert "waiting for mini_mnist/raw_gzip[train-images]: mnist-assets refresh in pid" in said
    assert "reused run " in said
    assert http_server.requests[path] == 2  # the refresh's HEAD (observing) and its one GET


# --- the lease record on its own ----------------------------------------------------------------


def test_a_lease_is_refused_while_held_renewed_taken_over_after_expiry_and_freed_on_release(tmp_path):
    path = UPath(tmp_path) / "_leases/d/a/p"
    mine, theirs = leases.Lease(path, 0.5, "d/a[p]"), leases.Lease(path, 0.5, "d/a[p]")

    assert mine.try_take("mine", "run-1") is None
    refused = theirs.try_take("theirs", None)
    assert refused is not None and refused.token == "mine" and refused.run_id == "run-1"
    time.sleep(0.3)
    assert mine.renew()
    time.sleep(0.3)  # 0.6 s after taking, 0.3 s after renewing: still live
    assert theirs.try_take("theirs", None) is not None
    time.sleep(0.4)  # expired: nobody renewed it within its term
    assert theirs.try_take("theirs", None) is None
    assert not mine.renew()  # the crashed-or-stalled holder learns it lost the lease
    assert mine.try_take("mine", "run-1") is not None

    theirs.release()
    assert mine.try_take("mine", "run-1") is None  # at once, not after expiry
    assert mine.holder()[0].token == "mine"


def test_an_unsafe_partition_name_gets_no_lease(tmp_path):
    class Store:
        root, lease_seconds = str(tmp_path), 1.0

    with pytest.raises(ValueError, match="unsafe lease name"):
        leases.lease_of(Store(), dg.AssetKey(["d", "a"]), "../x")
