"""The `mnist-assets` command as a user runs it: a real process, a real instance, the small real mirror."""

from __future__ import annotations

import json
import os
import re
import shutil

import dagster as dg
import numpy as np
import pytest

from mnist_assets import load
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_TEST, MINI_TRAIN


def test_prepare_builds_the_dataset_and_prints_where_everything_is(empty_project):
    project = empty_project
    cli = project.cli("prepare", "mini_mnist")
    assert cli.returncode == 0, cli.stderr
    prepared = json.loads(cli.stdout)
    assert prepared["ready"] and prepared["storage"] == str(project.storage)
    assert len(prepared["ran"]) == len(prepared["artifacts"]) == 4 + 4 + 3 + 1 + 1
    rows = {(a["asset"].split("/")[1], a["partition"]): a["rows"] for a in prepared["artifacts"]}
    assert rows[("shards", "train")] + rows[("shards", "test")] == rows[("idx", "train-labels")] == MINI_TRAIN
    assert rows[("shards", "holdout")] == MINI_TEST
    for artifact in prepared["artifacts"]:
        assert len(artifact["data_version"]) == 64 and os.path.exists(artifact["path"]), artifact
    assert "running mini_mnist/checkpoint[cnn]" in cli.stderr and "STEP_START" not in cli.stderr
    # not a terminal: plain lines that read well in a CI log, no cursor movement
    assert "\x1b[" not in cli.stderr and "✓" not in cli.stderr
    assert re.search(r"^done mini_mnist/checkpoint\[cnn\] in \d+\.\d\d s$", cli.stderr, re.MULTILINE)

    # what a notebook does next: read the split it was told about
    labels = np.concatenate([b for _, b in load("mini_mnist", "holdout", storage=prepared["storage"])])
    assert len(labels) == MINI_TEST


def test_refresh_on_a_terminal_shows_a_live_row_per_step(empty_project):
    project = empty_project
    shown = project.cli("refresh", "mini_mnist", terminal=True)
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["ran"]) == 13  # the summary still goes to stdout, whole
    assert "\x1b[" in shown.stderr  # a live display: cursor movement, not a log
    for label in (
        "raw_gzip[train-images]",
        "idx[test-labels]",
        "shards[holdout]",
        "checkpoint[cnn]",
        "best_model",
    ):
        assert re.search(rf"✓ mini_mnist/{re.escape(label)} \d+\.\d\d s", shown.stderr), label
    assert "Epoch" in shown.stderr or "epoch" in shown.stderr  # the steps' own messages print above


DAGSTER_FAILURE_REPORTS = ("Stack Trace", "Traceback", "STEP_FAILURE", "RUN_FAILURE", "Not executing")


@scenario(
    "Files",
    "Two catalog entries' files pinned to a wrong payload_sha256 (`mnist-assets refresh`, on a pipe and on "
    "a terminal)",
    "Each failure once, in the project's words: its `FAILED …: mini_mnist: could not fetch …` line on "
    "stderr and its error in the summary; no Dagster STEP_FAILURE/RUN_FAILURE report, no stack trace "
    "(both come back with `--verbose`)",
    "The event log keeps Dagster's failure events whole, stack traces included (the UI shows them)",
)
def test_a_failed_step_is_reported_once_in_its_own_words_without_stack_traces(empty_project):
    project = empty_project
    wrong = {"train-labels", "test-labels"}
    for key in wrong:
        project.dataset["files"][key]["payload_sha256"] = "0" * 64
    home = project.directory / "cli_home"

    def refresh(*args: str, terminal: bool = False):
        shutil.rmtree(home, ignore_errors=True)  # a first attempt each time: no "last attempt failed" line
        cli = project.cli(*args, "refresh", "mini_mnist", terminal=terminal)
        assert cli.returncode == 1, cli.stderr
        summary = json.loads(cli.stdout)
        assert {s["partition"] for s in summary["failed"]} == wrong
        return cli.stderr, summary

    for terminal in (False, True):
        stderr, summary = refresh(terminal=terminal)
        for reported in DAGSTER_FAILURE_REPORTS:
            assert reported not in stderr, (terminal, reported, stderr)
        for failure in summary["failed"]:
            key = failure["partition"]
            assert failure["error"].startswith(f"mini_mnist: could not fetch {key} "), failure["error"]
            assert "DownloadError" not in failure["error"]
            assert stderr.count(f"could not fetch {key} ") == 1, (terminal, stderr)
            assert f"FAILED mini_mnist/raw_gzip[{key}]: mini_mnist: could not fetch {key} " in stderr
        if terminal:
            assert "✗ mini_mnist/raw_gzip[train-labels]" in stderr  # the live rows, ended

    with dg.DagsterInstance.from_config(str(home)) as instance:  # the last run's event log, still whole
        failures = [
            entry.dagster_event
            for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        ]
    assert len(failures) == len(wrong)
    assert all(event.step_failure_data.error.stack for event in failures)

    stderr, _ = refresh("--verbose")
    assert stderr.count("STEP_FAILURE") == len(wrong) and "Stack Trace:" in stderr


def test_refresh_select_plans_only_the_selection_and_refuses_an_unknown_name(empty_project):
    project = empty_project  # nothing built: everything is missing, only the selection is planned
    planned = project.cli("refresh", "mini_mnist", "--select", "+shards[holdout]", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert [(s["asset"].split("/")[1], s["partition"]) for s in plan["ran"]] == [
        ("raw_gzip", "test-labels"),  # labels first, as always
        ("raw_gzip", "test-images"),
        ("idx", "test-labels"),
        ("idx", "test-images"),
        ("shards", "holdout"),
    ]
    test_files = "[test-images,test-labels]"
    shown = (
        f"selected: mini_mnist/idx{test_files}, mini_mnist/raw_gzip{test_files}, mini_mnist/shards[holdout]"
    )
    assert shown in planned.stderr.splitlines()

    refused = project.cli("refresh", "mini_mnist", "--select", "+shard")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (
        "mnist-assets refresh: --select: mini_mnist has no asset 'shard'; "
        "it has best_model, checkpoint, idx, model_configs, raw_gzip, shards, urls"
    )


def test_the_help_describes_the_command_in_whole_sentences(capsys):
    from mnist_assets import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert cli.description().endswith(".") and cli.description() in shown
    assert cli.description().startswith("mnist-assets: the project's command line")
