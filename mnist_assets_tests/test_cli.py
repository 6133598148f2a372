"""The `mnist-assets` command as a user runs it: a real process, a real instance, the small real mirror."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from mnist_assets import load
from mnist_assets_tests.conftest import MINI_TEST, MINI_TRAIN


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
