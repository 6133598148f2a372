"""The Dagster UI in a real browser: ``dagster dev`` on the small real mirror, driven by Debian's chromium.

What a user does after ``make dev``: open the dataset's lineage, select the checkpoint, materialize it,
follow the run to success, then read the accuracy and look at the training curves on the checkpoint's
page. The project comes built (the ``project`` fixture), so the one run launched here is a tiny training
run; the checkpoint page must show *that* run's materialization, not the build's.

On failure the test prints where it left its screenshots and the ``dagster dev`` log.
``MNIST_ASSETS_SCREENSHOT_DIR=docs`` also saves the README's picture there (``ui-checkpoint.png``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Page, sync_playwright

from mnist_assets_tests.support import REPO

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_DIR_ENV = "MNIST_ASSETS_SCREENSHOT_DIR"
LOCATION, DATASET = "mnist_assets", "mini_mnist"  # the workspace's code location; the mini catalog's dataset
STARTUP_SECONDS = 120  # dagster dev serving its UI (webserver, daemon and code server start in parallel)
RUN_SECONDS = 240  # the clicked run: a subprocess that imports TensorFlow, trains three tiny epochs
STEP_MS = 60_000  # any single page step: the first page load compiles the UI's JavaScript
GRACE_SECONDS = 20  # between SIGTERM and SIGKILL when stopping dagster dev

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
)


@dataclass
class DagsterDev:
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list[str]:
    """The live processes of ``session`` (pid and command line); zombies have exited, so they are not."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command name, which is in parentheses and may hold anything
            state, _ppid, _group, sid = stat.read_text().rpartition(")")[2].split()[:4]
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it exited meanwhile
            continue
        if int(sid) == session and state != "Z":
            found.append(f"{stat.parent.name}: {command[:200]}")
    return found


def stop_session(process: subprocess.Popen) -> list[str]:
    """SIGTERM the whole process group (dagster dev, its webserver, daemon, code servers and runs),
    SIGKILL what is left after a grace period; returns what still lives after that."""
    for sig, seconds in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)  # reap our own child, so it leaves no zombie behind
            if not session_processes(process.pid):
                return []
    return session_processes(process.pid)


def wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited with {process.returncode} before serving; its log: {log}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer on {url} within {STARTUP_SECONDS} s; its log: {log}")


@contextlib.contextmanager
def dagster_dev(project, evidence: Path) -> Iterator[DagsterDev]:
    """``dagster dev`` on the project's catalog, storage and instance, bound to 127.0.0.1 on a free port,
    in a process group of its own; every process of that group is gone afterwards."""
    home = Path(project.instance.root_directory)  # the project's instance, where its build is recorded
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    catalog = project.directory / "ui_catalog.json"
    catalog.write_text(json.dumps(project.document))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MNIST_ASSETS_CATALOG": str(catalog),
        "MNIST_ASSETS_STORAGE": str(project.storage),
    }
    port, log = free_port(), evidence / "dagster-dev.log"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml")]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            # workspace.yaml's working_directory is where dagster dev runs: the code server then imports
            # this checkout's mnist_assets (DAGSTER_HOME, set above, wins over the dagster.yaml there)
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, log)
        yield DagsterDev(url, log)
    finally:
        left = stop_session(process)
    assert not left, f"dagster dev left processes running after SIGKILL: {left}"


def open_lineage(page: Page, url: str, asset_names: set[str]) -> None:
    """The dataset's lineage, past the first-run dialog, with every asset drawn in the graph."""
    page.goto(f"{url}/locations/{LOCATION}/asset-groups/{DATASET}/lineage")
    welcome = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
    welcome.get_by_role("button", name="Skip").click()
    welcome.wait_for(state="detached")
    graph = page.locator("svg foreignObject")  # the nodes, not the asset list beside the graph
    for name in sorted(asset_names):
        graph.get_by_text(name, exact=True).wait_for()


def materialize_checkpoint(page: Page, url: str) -> str:
    """Select the checkpoint in the graph, materialize its partition ``cnn`` (the mini catalog's one model
    configuration, picked in the launch dialog), open the run the toast names; its id."""
    page.locator("svg foreignObject").get_by_text("checkpoint", exact=True).click()
    page.get_by_role("button", name=re.compile(r"Materialize selected…$")).click()  # … : asks partitions
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").click()
    page.keyboard.type("cnn")  # the picker's filter: one partition matches
    page.get_by_text("Select all (1)", exact=True).click()
    page.keyboard.press("Escape")  # closes the picker, not the dialog
    dialog.get_by_role("button", name="Launch 1 run", exact=True).click()
    toast = page.get_by_role("region", name=re.compile("Notifications"))
    run_path = toast.get_by_role("link", name="View").get_attribute("href") or ""
    assert re.fullmatch(r"/runs/[0-9a-f-]{36}", run_path), f"the launch toast links to {run_path!r}"
    page.goto(url + run_path)  # the toast's own link, without racing the toast's fading out
    return run_path.rpartition("/")[2]


def wait_for_run_end(page: Page) -> str:
    """On a run's page: its final status as the UI draws it (run_success, run_failed, run_canceled)."""
    final = page.get_by_role("img", name=re.compile(r"^run_(success|failed|canceled)$")).first
    final.wait_for(timeout=RUN_SECONDS * 1000)
    return final.get_attribute("aria-label") or ""


def metadata_row(page: Page, key: str):
    return page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))


def read_checkpoint_page(page: Page, url: str, run_id: str) -> tuple[str, int]:
    """The checkpoint's page showing the run's materialization: the holdout accuracy as shown, and the
    natural width of the training-curve picture once decoded (its "[Show Markdown]" dialog stays open)."""
    page.goto(f"{url}/assets/{DATASET}/checkpoint")
    page.locator(f'a[href^="/runs/{run_id}"]').first.wait_for()  # "Latest materialization": this run
    accuracy = metadata_row(page, "holdout_accuracy").get_by_role("cell").last.inner_text()
    metadata_row(page, "training_curves").get_by_text("[Show Markdown]", exact=True).click()
    picture = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]')
    # decode() settles once the browser has decoded the picture, and fails if it cannot
    width = picture.evaluate("image => image.decode().then(() => image.naturalWidth)")
    return accuracy.strip(), width


def save_readme_picture(page: Page) -> None:
    directory = os.environ.get(SCREENSHOT_DIR_ENV)
    if directory:  # with the accuracy in view too, below the open picture
        metadata_row(page, "holdout_accuracy").evaluate("row => row.scrollIntoView({block: 'end'})")
        page.screenshot(path=str(Path(directory) / "ui-checkpoint.png"))


def test_a_user_materializes_the_checkpoint_in_the_ui_and_sees_its_accuracy_and_curves(project, tmp_path):
    evidence = tmp_path / "ui"
    evidence.mkdir()
    asset_names = {key.path[-1] for key in project.defs().resolve_asset_graph().get_all_asset_keys()}
    with dagster_dev(project, evidence) as dev, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(STEP_MS)
        try:
            open_lineage(page, dev.url, asset_names)
            page.screenshot(path=str(evidence / "1-lineage.png"))
            run_id = materialize_checkpoint(page, dev.url)
            status = wait_for_run_end(page)
            page.screenshot(path=str(evidence / "2-run.png"))
            assert status == "run_success", f"run {run_id} ended as {status}; its page: 2-run.png"
            accuracy, picture_width = read_checkpoint_page(page, dev.url, run_id)
            page.screenshot(path=str(evidence / "3-checkpoint.png"))
            save_readme_picture(page)
        except BaseException as error:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(evidence / "failure.png"))
            note = f"screenshots and the dagster dev log: {evidence}"
            print(note)
            error.add_note(note)
            raise
        finally:
            browser.close()

    assert picture_width > 0
    # the page showed what the clicked run recorded
    assert project.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    latest = project.instance.get_latest_materialization_event(dg.AssetKey([DATASET, "checkpoint"]))
    assert latest is not None and latest.run_id == run_id
    materialization = latest.asset_materialization
    assert materialization is not None and "training_curves" in materialization.metadata
    assert float(accuracy) == materialization.metadata["holdout_accuracy"].value
