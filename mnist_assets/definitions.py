"""The Dagster definitions: every dataset's graph bound to the storage chosen in one place.

Settings come from the environment, read here only:
- ``MNIST_ASSETS_CATALOG``: a catalog JSON file (default: the packaged ``catalog.json``), each entry
  parsed on its own: a wrong one becomes its dataset's placeholder (:mod:`mnist_assets.catalog_errors`);
- ``MNIST_ASSETS_STORAGE``: where artifacts live, a directory or a URL whose scheme has a backend
  (``s3://``; see :mod:`mnist_assets.storage.registry`; default ``data/artifacts``);
- ``MNIST_ASSETS_MIRROR_<DATASET>``: mirror override, read when the definitions load;
- ``MNIST_ASSETS_REFRESH_CRON``: when the daily_refresh schedule observes the sources (default 04:00 UTC);
- ``MNIST_ASSETS_RETRY_BACKOFF``: seconds the sensor waits before retrying a partition whose last attempt
  failed and whose inputs did not change (default 300), doubled per failure in a row up to a day;
- ``MNIST_ASSETS_KEEP_VERSIONS``: how many committed versions of each artifact partition stay for
  ``mnist-assets rollback`` (default 3; the current one always stays too);
- ``MNIST_ASSETS_LEASE_SECONDS``: how long a partition's lease lasts unless its holder renews it (default
  30): another process waits while a live holder builds the partition, and takes a crashed holder's
  lease over once it expired (see :mod:`mnist_assets.storage.leases`);
- ``MNIST_ASSETS_EXECUTOR``: where steps run: ``in_process`` (default) or ``celery`` (Celery workers, see
  docs/deploy.md), which also needs ``MNIST_ASSETS_CELERY_BROKER``, the broker URL (e.g. Redis), read
  when a run starts.

A wrong value is a :class:`~mnist_assets.catalog.SettingError` naming the variable, what was found and
what to set it to: the command line prints it as one line and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from mnist_assets.assets import dataset_assets
from mnist_assets.automation import DEFAULT_BACKOFF_SECONDS, DEFAULT_REFRESH_CRON, automation
from mnist_assets.catalog import Catalog, CatalogError, Dataset, SettingError, read_catalog
from mnist_assets.catalog_errors import placeholder
from mnist_assets.storage.artifact_io import DEFAULT_LEASE_SECONDS
from mnist_assets.storage.io_managers import io_managers
from mnist_assets.storage.versions import DEFAULT_KEEP

DEFAULT_STORAGE = "data/artifacts"
EXECUTORS = ("in_process", "celery")
CELERY_BROKER_ENV = "MNIST_ASSETS_CELERY_BROKER"


def configured_storage() -> str:
    """Where artifacts live for this process: ``MNIST_ASSETS_STORAGE`` or ``data/artifacts``."""
    return os.environ.get("MNIST_ASSETS_STORAGE") or DEFAULT_STORAGE


def configured_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """Where steps run: ``name`` or ``MNIST_ASSETS_EXECUTOR``.

    In process by default: steps here are seconds of work, and a subprocess per step would cost more
    than the step. ``celery`` sends each step to a Celery worker (dagster-celery, the ``deploy`` extra),
    imported only then so the default needs none of it. Broker and result backend are the same URL
    (Redis keeps both), read from the environment when a run starts, as the workers read it from
    ``deploy/celery.yaml``.
    """
    name = name or os.environ.get("MNIST_ASSETS_EXECUTOR") or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name != "celery":
        raise SettingError(
            f"MNIST_ASSETS_EXECUTOR={name!r} is not an executor this project runs; "
            f"set it to one of {', '.join(EXECUTORS)}"
        )
    try:
        from dagster_celery import celery_executor
    except ImportError:
        raise SettingError(
            "MNIST_ASSETS_EXECUTOR=celery needs the deploy extra: pip install 'mnist_assets[deploy]'"
        ) from None
    broker = {"env": CELERY_BROKER_ENV}
    return celery_executor.configured({"broker": broker, "backend": broker}, name="celery")


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


def configured_retry_backoff() -> float:
    """``MNIST_ASSETS_RETRY_BACKOFF`` seconds, or the default; refused unless a positive number."""
    return _positive_seconds("MNIST_ASSETS_RETRY_BACKOFF", DEFAULT_BACKOFF_SECONDS)


def configured_lease_seconds() -> float:
    """``MNIST_ASSETS_LEASE_SECONDS``, or the default; refused unless a positive number."""
    return _positive_seconds("MNIST_ASSETS_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)


def configured_refresh_cron() -> str:
    """``MNIST_ASSETS_REFRESH_CRON``, or the default; refused unless a cron expression Dagster accepts
    (asked of Dagster itself, by defining a schedule with it, so the two cannot disagree)."""
    text = os.environ.get("MNIST_ASSETS_REFRESH_CRON") or DEFAULT_REFRESH_CRON
    try:
        dg.ScheduleDefinition(name="probe", cron_schedule=text, job_name="probe")
    except dg.DagsterInvalidDefinitionError:
        raise SettingError(
            f"MNIST_ASSETS_REFRESH_CRON={text!r}: set it to a cron expression of 5 fields (minute hour "
            f"day month weekday), e.g. {DEFAULT_REFRESH_CRON!r}"
        ) from None
    return text


def configured_keep_versions() -> int:
    """``MNIST_ASSETS_KEEP_VERSIONS``, or the default; refused unless a whole number of at least 1."""
    text = os.environ.get("MNIST_ASSETS_KEEP_VERSIONS") or str(DEFAULT_KEEP)
    if not text.isdigit() or int(text) < 1:
        raise SettingError(
            f"MNIST_ASSETS_KEEP_VERSIONS={text!r}: set it to how many versions of each artifact to keep "
            "for rollback, a whole number of at least 1, e.g. 3"
        )
    return int(text)


def dataset_parts(
    catalog: Catalog, assets_factory=dataset_assets
) -> tuple[list[dg.AssetsDefinition | dg.SourceAsset], list[dg.AssetSpec], list[dg.AssetChecksDefinition]]:
    """The assets of every good dataset, and a placeholder with a failing check for each broken one
    (:mod:`mnist_assets.catalog_errors`): an entry can be wrong where the catalog is parsed or where its
    assets are made (training and shard settings, a ``MNIST_ASSETS_MIRROR_<DATASET>`` override)."""
    assets: list[dg.AssetsDefinition | dg.SourceAsset] = []
    errors = {dataset_id: str(error) for dataset_id, error in catalog.problems.items()}
    for dataset_id, dataset in catalog.datasets.items():
        try:
            assets += assets_factory(dataset)
        except CatalogError as error:
            errors[dataset_id] = str(error.in_catalog(catalog.path) if catalog.path else error)
        except SettingError as error:
            errors[dataset_id] = f"dataset {dataset_id}: {error}"
    placeholders = [placeholder(dataset_id, line) for dataset_id, line in sorted(errors.items())]
    return assets, [spec for spec, _ in placeholders], [check for _, check in placeholders]


def build_definitions(
    datasets: Mapping[str, Dataset] | Catalog,
    storage: str,
    assets_factory=dataset_assets,
    refresh_cron: str = DEFAULT_REFRESH_CRON,
    executor: dg.ExecutorDefinition = dg.in_process_executor,
    retry_backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    keep_versions: int = DEFAULT_KEEP,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> dg.Definitions:
    """Every dataset's graph on ``storage``; a broken catalog entry (in a :class:`Catalog`, or raised
    while its assets are made) becomes that dataset's placeholder, the other datasets stay whole."""
    catalog = datasets if isinstance(datasets, Catalog) else Catalog(None, dict(datasets))
    resources = io_managers(storage, keep_versions, lease_seconds)
    assets, placeholders, checks = dataset_parts(catalog, assets_factory)
    parts = automation(assets, resources, refresh_cron, retry_backoff_seconds)
    return dg.Definitions(
        **{**parts, "assets": [*parts["assets"], *placeholders]},
        asset_checks=checks,
        resources=resources,
        executor=executor,
    )


defs = build_definitions(
    read_catalog(os.environ.get("MNIST_ASSETS_CATALOG") or None),
    configured_storage(),
    refresh_cron=configured_refresh_cron(),
    executor=configured_executor(),
    retry_backoff_seconds=configured_retry_backoff(),
    keep_versions=configured_keep_versions(),
    lease_seconds=configured_lease_seconds(),
)
