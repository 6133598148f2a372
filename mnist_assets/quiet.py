"""Quiet by default: the one place that hides the noise this project chose, and brings it back on request.

Three kinds of noise reach users otherwise:

- Dagster warns about beta features. ``WARNING_FILTERS`` ignores exactly the warnings of the features
  used here on purpose, and the warnings that libraries raise about their own calls, each matched
  by category and message (and the library module for the latter), each with the reason; any other
  warning still shows. Importing ``mnist_assets`` installs them (the package imports this module first).
- TensorFlow's C++ start-up lines (oneDNN, cuda drivers, cuInit, cpu_feature_guard, absl's
  "All log messages before absl::InitializeLog()"). ``tensorflow_import()`` wraps the one import of
  TensorFlow (in ``mnist_assets.training``) so they stay hidden.

- Dagster's failure reports in the console of refresh's runs: each failed step prints STEP_FAILURE and
  RUN_FAILURE with the error and its stack trace (and "Dependencies for step … failed. Not executing."
  for each step after it), although refresh prints every failure once, in its own words (the FAILED
  and BLOCKED lines, the summary). ``console_logger`` is Dagster's console logger without them; the
  event log keeps them whole (the UI shows them).

``MNIST_ASSETS_VERBOSE=1`` (or ``mnist-assets --verbose``) installs no filter, leaves TensorFlow's logs
as TensorFlow prints them and Dagster's console as Dagster prints it. An explicit
``TF_CPP_MIN_LOG_LEVEL`` always wins over both.

Two copies live elsewhere because this module cannot reach them: pyproject.toml's pytest
``filterwarnings`` repeats ``WARNING_FILTERS`` (pytest resets the filters for every test;
``mnist_assets_tests/test_quiet.py`` checks that both lists agree), and ``scripts/materialize.sh`` hides the
``dagster asset materialize`` supersession warning, raised by the Dagster CLI before this project loads,
and sets its runs' console to INFO (run config: the steps' messages, not Dagster's DEBUG events).
This module imports neither TensorFlow nor anything heavy: loading the definitions stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import cast

import dagster as dg
from dagster import BetaWarning

from mnist_assets.settings import verbose

WARNING_FILTERS: tuple[tuple[type[Warning], str, str], ...] = (
    # (category, message regex, module regex: where the warning points, "" for anywhere)
    # -- Dagster's beta features, used on purpose:
    # observable_source_asset: each dataset's `urls` source is observed (catalog entry, HEAD headers or a
    # local mirror's payload sha256), so a changed remote file makes exactly its raw partition stale.
    (BetaWarning, r"Function `observable_source_asset` is currently in beta", ""),
    # DataVersionsByPartition: that observation reports one data version per file partition.
    (BetaWarning, r"Class `DataVersionsByPartition` is currently in beta", ""),
    # Output(data_version=...): every asset returns a content data version, so a rebuild that reproduces
    # the same content stops staleness there (a re-compressed mirror re-downloads one file, nothing else).
    (BetaWarning, r"Parameter `data_version` of initializer `Output\.__init__` is currently in beta", ""),
    # AutomationConditionSensorDefinition(use_user_code_server=True): the refresh_stale_assets sensor's
    # condition reads artifact storage, which only the code server can do, not the daemon.
    (
        BetaWarning,
        r"Parameter `use_user_code_server` of initializer "
        r"`AutomationConditionSensorDefinition\.__init__` is currently in beta",
        "",
    ),
    # -- Warnings libraries raise about their own code calling their own API, not about ours (pytest and
    # -W default show them; Python's default filters hide deprecations). Only that call site is matched:
    # Dagster 1.13 turns each observable source asset into an external asset reading its own deprecated
    # OpDefinition.version (we never call it; an observable_source_asset is all it takes).
    (
        DeprecationWarning,
        r"Property `OpDefinition\.version` is deprecated",
        r"dagster\._core\.definitions\.external_asset",
    ),
    # Dagster's evaluate_automation_conditions (how test_automation.py evaluates the sensor's condition
    # without a daemon) selects AssetSelection.all(include_sources=True), a beta parameter, by default.
    (
        BetaWarning,
        r"Parameter `include_sources` of function `AssetSelection\.all` is currently in beta",
        r"dagster\._core\.definitions\.declarative_automation\.automation_condition_tester",
    ),
    # Dagster's selection parser (AssetSelection.from_string, which `mnist-assets refresh --select` uses)
    # passes that beta parameter to AssetSelection.all, groups and tag itself, for `not`, `group:`, `tag:`.
    (
        BetaWarning,
        r"Parameter `include_sources` of function `AssetSelection\.(all|groups|tag)` is currently in beta",
        r"dagster\._core\.definitions\.antlr_asset_selection",
    ),
    # Keras 3.15 model.save() converts each variable with np.array(variable), whose __array__ lacks
    # NumPy 2's copy keyword (training.train saves the model the documented way, model.save(path)).
    (
        DeprecationWarning,
        r"__array__ implementation doesn't accept a copy keyword",
        r"keras\.src\.backend\.tensorflow\.core",
    ),
)

# TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when it loads: 3 hides its INFO, WARNING and ERROR lines
# (the cuInit failure on a machine without a GPU is an ERROR line; 2 still shows it). It does not hide
# the lines logged while the libraries load, before absl::InitializeLog() (oneDNN, cuda drivers, the
# absl notice itself), so tensorflow_import() captures stderr during the import and drops exactly the
# absl lines below the level. TF_ENABLE_ONEDNN_OPTS=0 would silence oneDNN too but changes numerics.
QUIET_TF_LOG_LEVEL = "3"
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def _below_error(record: logging.LogRecord) -> bool:
    """Dagster logs at ERROR only its failure reports (a step's or run's failure with its stack trace, a
    step not executed because its input failed); the steps' own messages are INFO and WARNING."""
    return record.levelno < logging.ERROR


@dg.logger(
    dg.colored_console_logger.config_schema,
    description="Dagster's colored console logger without its failure reports, unless verbose.",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """What refresh's runs print: the steps' own messages; a failure is refresh's to report, once."""
    logger = dg.colored_console_logger.logger_fn(init_context)
    if not verbose():
        logger.addFilter(_below_error)
    return logger


def install() -> None:
    """Ignore exactly the warnings of ``WARNING_FILTERS``, unless verbose. Idempotent."""
    if verbose():
        return
    for category, message, module in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def uninstall() -> None:
    """Remove the filters ``install`` added (``mnist-assets --verbose``), leaving every other filter."""
    # an "ignore" leaves no mark in the warning registries, so removing it is all it takes
    ours = set(WARNING_FILTERS)

    def is_ours(f) -> bool:
        action, message, category, module, _ = f
        patterns = (getattr(message, "pattern", message) or "", getattr(module, "pattern", module) or "")
        return action == "ignore" and (category, *patterns) in ours

    filters = cast(list, warnings.filters)  # a list at run time; typeshed calls it a Sequence
    filters[:] = [f for f in filters if not is_ours(f)]


def tensorflow_log_level() -> int:
    """The TF_CPP_MIN_LOG_LEVEL in effect: the user's, else 0 when verbose, else ``QUIET_TF_LOG_LEVEL``.

    Sets the environment variable when the user did not, so TensorFlow reads the same level.
    """
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and not verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_TF_LOG_LEVEL
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def drop_startup_lines(captured: bytes, level: int) -> bytes:
    """``captured`` stderr without the absl lines below ``level`` (and absl's notice); the rest as is."""
    if level <= 0:
        return captured
    kept = []
    for line in captured.splitlines(keepends=True):
        if line.rstrip(b"\r\n") == _ABSL_NOTICE:
            continue
        match = _ABSL_LINE.match(line)
        if match and _SEVERITY[match.group(1)] < level:
            continue
        kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def tensorflow_import() -> Iterator[None]:
    """Import TensorFlow inside this: its start-up lines below the log level stay hidden.

    File descriptor 2 points at a temporary file during the import (the lines come from C++, not from
    Python's sys.stderr); afterwards everything else that was written there, such as a Python warning
    or another thread's output, goes to stderr unchanged.
    """
    level = tensorflow_log_level()
    if level <= 0 or "tensorflow" in sys.modules:
        yield
        return
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to hide the lines from
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            rest = drop_startup_lines(capture.read(), level)
            if rest:
                with open(2, "wb", closefd=False) as stderr:
                    stderr.write(rest)


def _flush_stderr() -> None:
    """Python's own buffered stderr text, written out before file descriptor 2 changes hands."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # None, or closed
        sys.stderr.flush()


install()
