"""Every setting this project reads from the environment, its default and its check, in one place.

- ``MNIST_ASSETS_CATALOG``: a catalog JSON file (default: the packaged ``catalog.json``), each entry
  parsed on its own: a wrong one becomes its dataset's placeholder (:mod:`mnist_assets.catalog_errors`);
- ``MNIST_ASSETS_STORAGE``: where artifacts live, a directory or any fsspec URL (default ``data/artifacts``);
- ``MNIST_ASSETS_MIRROR_<DATASET>``: mirror override, read when the definitions load;
- ``MNIST_ASSETS_REFRESH_CRON``: when the daily_refresh schedule observes the sources (default 04:00 UTC);
- ``MNIST_ASSETS_RETRY_BACKOFF``: seconds the sensor waits before retrying a partition whose last attempt
  failed and whose inputs did not change (default 300), doubled per failure in a row up to a day;
- ``MNIST_ASSETS_KEEP_VERSIONS``: how many committed versions of each artifact partition stay for
  ``mnist-assets rollback`` (default 3; the current one always stays too);
- ``MNIST_ASSETS_LEASE_SECONDS``: how long a partition's lease lasts unless its holder renews it (default
  30): another process waits while a live holder builds the partition, and takes a crashed holder's
  lease over once it expired (see :mod:`mnist_assets.leases`);
- ``MNIST_ASSETS_EXECUTOR``: where steps run: ``in_process`` (default) or ``celery`` (Celery workers, see
  docs/deploy.md), which also needs ``MNIST_ASSETS_CELERY_BROKER``, the broker URL (e.g. Redis), read
  by Dagster's Celery executor when a run starts;
- ``MNIST_ASSETS_VERBOSE``: show everything the project hides by default (:mod:`mnist_assets.quiet`).

A wrong value is a :class:`SettingError` naming the variable, what was found and what to set it to:
the command line prints it as one line and exits 2. This module is the ground floor: it imports
nothing of the project, so any module may read a setting without pulling in the definitions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, cast, get_args

import dagster as dg

CATALOG = "MNIST_ASSETS_CATALOG"
STORAGE = "MNIST_ASSETS_STORAGE"
REFRESH_CRON = "MNIST_ASSETS_REFRESH_CRON"
RETRY_BACKOFF = "MNIST_ASSETS_RETRY_BACKOFF"
KEEP_VERSIONS = "MNIST_ASSETS_KEEP_VERSIONS"
LEASE_SECONDS = "MNIST_ASSETS_LEASE_SECONDS"
EXECUTOR = "MNIST_ASSETS_EXECUTOR"
CELERY_BROKER_ENV = "MNIST_ASSETS_CELERY_BROKER"
VERBOSE_ENV = "MNIST_ASSETS_VERBOSE"
MIRROR_PREFIX = "MNIST_ASSETS_MIRROR_"

DEFAULT_STORAGE = "data/artifacts"
DEFAULT_REFRESH_CRON = "0 4 * * *"
DEFAULT_BACKOFF_SECONDS = 300.0
DEFAULT_KEEP = 3
DEFAULT_LEASE_SECONDS = 30.0
Executor = Literal["in_process", "celery"]
EXECUTORS: tuple[Executor, ...] = get_args(Executor)


class SettingError(ValueError):
    """A user's setting is wrong: a catalog entry, or an ``MNIST_ASSETS_*`` environment variable. The
    message is the whole story, one line naming where, what was found and what is expected, so the
    command line shows it alone (no traceback unless ``--verbose``) and exits 2."""


def catalog_path() -> str | None:
    """``MNIST_ASSETS_CATALOG``, or None for the packaged catalog."""
    return os.environ.get(CATALOG) or None


def storage() -> str:
    """Where artifacts live for this process: ``MNIST_ASSETS_STORAGE`` or ``data/artifacts``."""
    return os.environ.get(STORAGE) or DEFAULT_STORAGE


def executor(name: str | None = None) -> Executor:
    """Where steps run: ``name`` or ``MNIST_ASSETS_EXECUTOR`` (default in process); refused unless one
    of :data:`EXECUTORS`."""
    name = name or os.environ.get(EXECUTOR) or "in_process"
    if name not in EXECUTORS:
        raise SettingError(
            f"{EXECUTOR}={name!r} is not an executor this project runs; "
            f"set it to one of {', '.join(EXECUTORS)}"
        )
    return cast(Executor, name)


def _positive_seconds(variable: str, default: float) -> float:
    """``variable``'s seconds, or ``default``; refused unless a positive number."""
    text = os.environ.get(variable) or str(default)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise SettingError(f"{variable}={text!r}: set it to a positive number of seconds, e.g. {default:g}")
    return seconds


def retry_backoff() -> float:
    """``MNIST_ASSETS_RETRY_BACKOFF`` seconds, or the default; refused unless a positive number."""
    return _positive_seconds(RETRY_BACKOFF, DEFAULT_BACKOFF_SECONDS)


def lease_seconds() -> float:
    """``MNIST_ASSETS_LEASE_SECONDS``, or the default; refused unless a positive number."""
    return _positive_seconds(LEASE_SECONDS, DEFAULT_LEASE_SECONDS)


def refresh_cron() -> str:
    """``MNIST_ASSETS_REFRESH_CRON``, or the default; refused unless a cron expression Dagster accepts
    (asked of Dagster itself, by defining a schedule with it, so the two cannot disagree)."""
    text = os.environ.get(REFRESH_CRON) or DEFAULT_REFRESH_CRON
    try:
        dg.ScheduleDefinition(name="probe", cron_schedule=text, job_name="probe")
    except dg.DagsterInvalidDefinitionError:
        raise SettingError(
            f"{REFRESH_CRON}={text!r}: set it to a cron expression of 5 fields (minute hour "
            f"day month weekday), e.g. {DEFAULT_REFRESH_CRON!r}"
        ) from None
    return text


def keep_versions() -> int:
    """``MNIST_ASSETS_KEEP_VERSIONS``, or the default; refused unless a whole number of at least 1."""
    text = os.environ.get(KEEP_VERSIONS) or str(DEFAULT_KEEP)
    if not text.isdigit() or int(text) < 1:
        raise SettingError(
            f"{KEEP_VERSIONS}={text!r}: set it to how many versions of each artifact to keep "
            f"for rollback, a whole number of at least 1, e.g. {DEFAULT_KEEP}"
        )
    return int(text)


def verbose() -> bool:
    """Whether the user asked to see everything (``MNIST_ASSETS_VERBOSE`` set and not 0/false/no/off)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def ask_verbose() -> None:
    """Turn verbose on for this process and the processes it starts (``mnist-assets --verbose``)."""
    os.environ[VERBOSE_ENV] = "1"


def mirror_variable(dataset_id: str) -> str:
    """The environment variable that overrides ``dataset_id``'s mirror list."""
    return f"{MIRROR_PREFIX}{dataset_id.upper()}"


def mirror_override(dataset_id: str, environ: Mapping[str, str] | None = None) -> str:
    """``MNIST_ASSETS_MIRROR_<DATASET>`` as set in ``environ`` (this process's environment by default),
    stripped; empty when unset. :mod:`mnist_assets.catalog` parses it like the catalog's mirrors."""
    environ = os.environ if environ is None else environ
    return environ.get(mirror_variable(dataset_id), "").strip()
