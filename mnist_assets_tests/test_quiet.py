"""Quiet by default: no warnings and no TensorFlow start-up lines, unless MNIST_ASSETS_VERBOSE asks.

Real subprocesses, started together (each pays for importing Dagster or TensorFlow; side by side they
pay it once in wall time), with a real catalog on a real local mirror.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tomllib
import warnings

import dagster as dg
import pytest

from mnist_assets import quiet, settings
from mnist_assets_tests.support import REPO, mini_catalog_document

PYTHON = sys.executable
MNIST_ASSETS = os.path.join(os.path.dirname(sys.executable), "mnist-assets")
TF_LINE = re.compile(r"^[IWEF]\d{4} .*\] |absl::InitializeLog|oneDNN|cuInit|cuda drivers", re.M)


def run_together(*commands: tuple[list[str], dict]) -> list[subprocess.CompletedProcess]:
    """Start every (argv, extra environment) at once from the repository root, then wait for all."""
    base = {k: v for k, v in os.environ.items() if k not in (settings.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    started = [
        subprocess.Popen(
            argv, cwd=REPO, env={**base, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv, extra in commands
    ]
    done = []
    for process, (argv, _) in zip(started, commands, strict=True):
        out, err = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return done


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Warning" in line]


def test_loading_the_definitions_prints_nothing_even_with_every_warning_shown(tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path), "PYTHONWARNINGS": "default"}
    load = "from mnist_assets import defs"  # built on first access, not by `import mnist_assets`
    quiet_run, verbose_run = run_together(
        ([PYTHON, "-c", load], env),
        ([PYTHON, "-c", load], {**env, settings.VERBOSE_ENV: "1"}),
    )
    assert quiet_run.returncode == 0 and quiet_run.stderr == ""
    # what the filters hide is there to hide: the test fails if the filters stop being the reason
    assert verbose_run.returncode == 0
    assert any(
        "BetaWarning: Function `observable_source_asset`" in w for w in warning_lines(verbose_run.stderr)
    )


def test_status_and_refresh_dry_run_print_no_warning_unless_verbose(mini_mirror, tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(mini_catalog_document(mini_mirror, [f"{mini_mirror['directory']}/"])))
    env = {
        "MNIST_ASSETS_CATALOG": str(catalog),
        "MNIST_ASSETS_STORAGE": str(tmp_path / "artifacts"),
        "PYTHONWARNINGS": "default",
    }

    def home(name: str) -> dict:  # one instance each: the three run side by side
        (tmp_path / name).mkdir()
        (tmp_path / name / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        return {**env, "DAGSTER_HOME": str(tmp_path / name)}

    status, dry_run, verbose_status = run_together(
        ([MNIST_ASSETS, "status", "mini_mnist"], home("status")),
        ([MNIST_ASSETS, "refresh", "--dry-run", "mini_mnist"], home("dry_run")),
        ([MNIST_ASSETS, "--verbose", "status", "mini_mnist"], home("verbose_status")),
    )
    assert status.returncode == 1 and "mini_mnist/checkpoint" in status.stdout  # nothing built yet
    assert warning_lines(status.stderr) == []
    assert dry_run.returncode == 0, dry_run.stderr
    assert json.loads(dry_run.stdout) and warning_lines(dry_run.stderr) == []
    assert verbose_status.stdout == status.stdout
    assert any("BetaWarning" in w for w in warning_lines(verbose_status.stderr)), verbose_status.stderr


TINY_FIT = """
from types import SimpleNamespace
import numpy as np
from mnist_assets import training
params = SimpleNamespace(epochs=1, learning_rate=1e-3, conv_filters=[2], dense_units=4, dropout=0.0,
                         batch_norm=False)
model = training.build_model((8, 8), 3, params, steps_per_epoch=1)
model.fit(np.zeros((6, 8, 8, 1), "uint8"), np.arange(6) % 3, epochs=1, batch_size=6, verbose=0)
print("fitted")
"""


def test_tensorflow_start_up_lines_are_hidden_by_default_and_shown_when_verbose(tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path)}
    quiet_run, verbose_run = run_together(
        ([PYTHON, "-c", TINY_FIT], env),
        ([PYTHON, "-c", TINY_FIT], {**env, settings.VERBOSE_ENV: "1"}),
    )
    assert quiet_run.stdout == verbose_run.stdout == "fitted\n", quiet_run.stderr + verbose_run.stderr
    assert quiet_run.stderr == ""
    # measured with TensorFlow 2.21 on a machine without a GPU: oneDNN, cuda drivers, cpu_feature_guard,
    # cuInit and absl's notice; any one of them proves the lines are there when asked for
    assert TF_LINE.search(verbose_run.stderr), verbose_run.stderr


ABSL_START_UP = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1795447544.735266    5876 port.cc:153] oneDNN custom operations are on.\n"
    b"I0000 00:00:1795447544.735578    5876 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
    b"/some/module.py:3: UserWarning: a Python warning written meanwhile\n"
    b"  warnings.warn(...)\n"
    b"W0000 00:00:1795447544.815353    5876 something.cc:12] a warning line\n"
    b"E0000 00:00:1795447549.107917    5876 cuda_platform.cc:52] failed call to cuInit\n"
)


def test_start_up_lines_below_the_level_are_dropped_and_everything_else_kept():
    def lines(level):
        return quiet.drop_startup_lines(ABSL_START_UP, level).decode().splitlines()

    assert lines(0) == ABSL_START_UP.decode().splitlines()
    assert [line[:5] for line in lines(2)] == ["/some", "  war", "E0000"]
    assert lines(3) == [
        "/some/module.py:3: UserWarning: a Python warning written meanwhile",
        "  warnings.warn(...)",
    ]


@pytest.mark.parametrize(
    ("verbose", "explicit", "expected"),
    [(None, None, 3), ("1", None, 0), (None, "1", 1), ("1", "2", 2), ("0", None, 3)],
)
def test_an_explicit_tf_log_level_wins_else_verbose_decides(monkeypatch, verbose, explicit, expected):
    for name, value in ((settings.VERBOSE_ENV, verbose), ("TF_CPP_MIN_LOG_LEVEL", explicit)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert quiet.tensorflow_log_level() == expected
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == (explicit or ("3" if expected == 3 else None))


def test_the_filters_hide_exactly_the_features_used_on_purpose(monkeypatch):
    monkeypatch.delenv(settings.VERBOSE_ENV, raising=False)
    beta = "Function `observable_source_asset` is currently in beta, and may have breaking changes"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn(beta, dg.BetaWarning, stacklevel=1)
        warnings.warn(beta.replace("observable_source_asset", "other_feature"), dg.BetaWarning, stacklevel=1)
        warnings.warn(beta, UserWarning, stacklevel=1)
        # a library's deprecation is hidden only where that library raises it, not in our code
        warnings.warn("Property `OpDefinition.version` is deprecated", DeprecationWarning, stacklevel=1)
        assert [(w.category, str(w.message).split("`")[1]) for w in seen] == [
            (dg.BetaWarning, "other_feature"),
            (UserWarning, "observable_source_asset"),
            (DeprecationWarning, "OpDefinition.version"),
        ]
        seen.clear()
        quiet.uninstall()
        warnings.warn(beta, dg.BetaWarning, stacklevel=1)
        assert len(seen) == 1


def test_pytest_filterwarnings_repeat_exactly_the_quiet_filters():
    """pytest resets the warning filters for every test, so pyproject.toml repeats quiet's list."""
    document = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set()
    for entry in document["tool"]["pytest"]["ini_options"]["filterwarnings"]:
        action, message, category, *module = entry.split(":")
        where, _, name = category.rpartition(".")
        assert action == "ignore" and len(module) <= 1, entry
        listed.add((getattr(importlib.import_module(where or "builtins"), name), message, "".join(module)))
    assert listed == set(quiet.WARNING_FILTERS)
