"""Ctrl-C stops ``make dev`` and everything it started (issue 21, item 9).

``make dev`` runs for real, started the way a script starts it: in the background of a non-interactive
shell, which makes its SIGINT ignored (``scripts/with_default_signals.py`` tells what Dagster then does).
Once the UI answers and both sensors have ticked in the code server, the whole process group gets a
SIGINT, as from Ctrl-C; every process found before the signal (the group, and every descendant of it
wherever it went) must be gone within a bound that only keeps a hang from stalling the suite.

The make command skips its install step (``-o .venv/bin/.installed``): the recipe run is ``make dev``'s
own, and the virtualenv is never rebuilt by a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import REPO

SENSORS = {"refresh_stale_assets", "fail_dead_runs"}
STARTUP_SECONDS = 120  # bounds: the UI answering, then both sensors' first ticks
STOP_SECONDS = 15  # liveness bound for the whole tree after SIGINT, not a timing assert

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, session id, start time) of a live process; None once it is gone or a zombie."""
    try:
        # the fields after the command name, which is in parentheses and may hold anything
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    state, parent, _group, session = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    return None if state == "Z" else (state, parent, session, int(fields[19]))


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return "?"


def process_tree(root: int) -> dict[tuple[int, int], str]:
    """Every live process of ``root``'s session and every descendant of ``root`` (also one that left
    the session), keyed by (pid, start time) so that a reused pid is not mistaken for a survivor."""
    stats = {int(p.name): proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    live = {pid: stat for pid, stat in stats.items() if stat}
    members = {pid for pid, (_s, _p, session, _t) in live.items() if session == root}
    grew = True
    while grew:  # descendants, to a fixed point
        children = {pid for pid, (_s, parent, _ss, _t) in live.items() if parent in members}
        grew = not children <= members
        members |= children
    return {(pid, live[pid][3]): command_line(pid) for pid in members}


def still_running(tree: dict[tuple[int, int], str]) -> list[str]:
    return [
        f"{pid}: {command[:160]}"
        for (pid, started), command in tree.items()
        if (stat := proc_stat(pid)) and stat[3] == started
    ]


def sigint_ignored(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def wait_until_serving(url: str, tree_root: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/server_info", timeout=5) as answer:
            if answer.status == 200:
                return
        if not still_running(process_tree(tree_root)):
            pytest.fail(f"make dev exited before serving; its log: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"make dev did not answer on {url} within {STARTUP_SECONDS} s; its log: {log}")


def wait_for_sensor_ticks(home: Path) -> None:
    """Until every sensor of ``SENSORS`` has finished a tick (evaluated in the code server)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            ticked = {
                state.instigator_name
                for state in instance.all_instigator_state()
                if state.instigator_name in SENSORS
                and any(
                    tick.status.name != "STARTED"  # SUCCESS, SKIPPED or FAILURE: it ended
                    for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
                )
            }
            if ticked == SENSORS:
                return
            time.sleep(1)
    pytest.fail(f"sensors {sorted(SENSORS - ticked)} did not tick within {STARTUP_SECONDS} s")


def kill_what_is_left(tree: dict[tuple[int, int], str]) -> None:
    for (pid, started), _command in tree.items():
        if (stat := proc_stat(pid)) and stat[3] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@scenario(
    "Crashes and concurrency",
    "Ctrl-C (SIGINT to the process group) of `make dev` started in the background by a script, "
    "after both sensors ticked in the code server",
    "`dagster dev`, its webserver, daemon, code server, runs and multiprocessing resource tracker "
    "all exit within seconds",
    "The instance and the artifacts; no process left serving the port or holding the instance",
)
def test_sigint_to_the_group_stops_make_dev_and_everything_it_started(mini_catalog, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port, log = free_port(), tmp_path / "make-dev.log"
    make_dev = ["make", "-C", str(REPO), "-o", ".venv/bin/.installed", "dev"]
    variables = [f"DEV_PORT={port}", f"DAGSTER_HOME={home}"]  # on make's command line: they win there
    env = {
        **os.environ,
        "MNIST_ASSETS_CATALOG": str(mini_catalog["path"]),  # a loopback mirror
        "MNIST_ASSETS_STORAGE": str(tmp_path / "artifacts"),
    }
    with log.open("wb") as output:
        # `make dev &` in a script: sh gives its background job an ignored SIGINT
        shell = subprocess.Popen(
            ["sh", "-c", '"$@" & wait', "sh", *make_dev, *variables],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tree: dict[tuple[int, int], str] = {}
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", shell.pid, log)
        wait_for_sensor_ticks(home)
        tree = process_tree(shell.pid)
        commands = " | ".join(tree.values())
        for part in (
            "make -C",
            "dagster dev",
            "code-server start",
            "api grpc",
            "dagster_webserver",
            "_daemon run",
        ):
            assert part in commands, f"no {part!r} among the processes of make dev: {commands}"
        make_pid = next(pid for (pid, _t), command in tree.items() if command.startswith("make "))
        assert sigint_ignored(make_pid), "make did not inherit an ignored SIGINT: not the background case"

        os.killpg(shell.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        while (left := still_running(tree)) and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                shell.wait(timeout=0.2)  # our own child: reaped, it leaves no zombie
        assert not left, f"still running {STOP_SECONDS} s after SIGINT to make dev's group: {left}"
    finally:
        kill_what_is_left(tree or process_tree(shell.pid))
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.wait(timeout=10)
