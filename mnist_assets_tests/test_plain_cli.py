"""The plain Dagster CLI's runs are written once: ``assets.materialization_steps``.

``scripts/materialize.sh`` and the README's "The plain Dagster CLI" block must run exactly those steps,
in that order, each selecting the step's assets plus the sources they are built from (so a run
observes what it reads). Both are run here for real by bash, with a stand-in ``dagster`` that records
its arguments instead of materializing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

from mnist_assets.assets import materialization_steps
from mnist_assets.catalog import load_catalog

REPO = Path(__file__).resolve().parents[1]
DATASET = "fashion_mnist"

Run = tuple[frozenset[str], str | None, dict | None]
"""What one `dagster asset materialize` does: the selection, the partition and the run config (its
``loggers`` aside: how the run prints is not what it runs, see :func:`console_levels`)."""
QUIET_CONSOLE = {"console": {"config": {"log_level": "INFO"}}}


def expected_runs(epochs: int | None) -> list[Run]:
    from mnist_assets import defs

    graph = defs.resolve_asset_graph()
    runs = []
    for names, partition in materialization_steps(load_catalog()[DATASET]):
        keys = [dg.AssetKey([DATASET, name]) for name in names]
        sources = {p for k in keys for p in graph.get(k).parent_keys if graph.get(p).is_observable}
        config = None
        if "checkpoint" in names and epochs:
            config = {"ops": {f"{DATASET}__checkpoint": {"config": {"epochs": epochs}}}}
        runs.append((frozenset(k.to_user_string() for k in [*sources, *keys]), partition, config))
    return runs


def stand_in_dagster(directory: Path) -> Path:
    """A ``dagster`` that prints its arguments as JSON, beside the venv's python (the script asks it)."""
    fake = directory / "dagster"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    python = directory / "python"  # a wrapper: a symlink outside the venv would lose the venv
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return fake


def parse(stdout: str) -> list[Run]:
    runs = []
    for options in _invocations(stdout):
        config = json.loads(options.get("--config-json", "{}"))
        config.pop("loggers", None)
        runs.append((frozenset(options["--select"].split(",")), options.get("--partition"), config or None))
    return runs


def console_levels(stdout: str) -> list[dict | None]:
    """Each run's ``loggers`` run config (None: Dagster's default console, which prints DEBUG events)."""
    return [json.loads(options.get("--config-json", "{}")).get("loggers") for options in _invocations(stdout)]


def _invocations(stdout: str) -> list[dict[str, str]]:
    invocations = []
    for line in stdout.splitlines():
        args = json.loads(line)
        assert args[:4] == ["asset", "materialize", "-m", "mnist_assets"], args
        invocations.append(dict(zip(args[4::2], args[5::2], strict=True)))
    return invocations


def materialize_sh(fake: Path, *args: str, verbose: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MNIST_ASSETS_VERBOSE"}
    env.update({"DAGSTER": str(fake), **({"MNIST_ASSETS_VERBOSE": verbose} if verbose else {})})
    script = [str(REPO / "scripts/materialize.sh"), DATASET, *args]
    return subprocess.run(["bash", *script], env=env, capture_output=True, text=True, check=True).stdout


def test_scripts_materialize_runs_exactly_the_materialization_steps(tmp_path):
    fake = stand_in_dagster(tmp_path)
    for epochs in (None, 1):
        assert parse(materialize_sh(fake, *([str(epochs)] if epochs else []))) == expected_runs(epochs)


def test_scripts_materialize_prints_the_steps_messages_not_dagsters_debug_events_unless_verbose(tmp_path):
    """CI's plain CLI path: every run's console at INFO (the event log keeps every event whatever it is)."""
    fake = stand_in_dagster(tmp_path)
    quiet = console_levels(materialize_sh(fake, "1"))
    assert len(quiet) == len(expected_runs(1)) and all(level == QUIET_CONSOLE for level in quiet)
    assert set(console_levels(materialize_sh(fake, "1", verbose="1"))) == {None}


def test_the_readmes_plain_cli_block_runs_exactly_the_materialization_steps(tmp_path):
    fake = stand_in_dagster(tmp_path)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The plain Dagster CLI", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    done = subprocess.run(
        ["bash", "-c", f'dagster() {{ "{fake}" "$@"; }}\n{block}'], capture_output=True, text=True, check=True
    )
    assert parse(done.stdout) == expected_runs(1)
