"""The Dagster definitions: every dataset's graph bound to the storage chosen in one place.

The settings (catalog, storage, schedule, retry backoff, kept versions, leases, executor) come from the
environment through :mod:`mnist_assets.settings`, which reads and checks each of them; a wrong value is
a :class:`~mnist_assets.settings.SettingError` the command line prints as one line, exit 2. Storage is a
directory or a URL whose scheme has a backend (:mod:`mnist_assets.storage.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from mnist_assets import settings
from mnist_assets.assets import dataset_assets
from mnist_assets.catalog import Catalog, CatalogError, Dataset, read_catalog
from mnist_assets.catalog_errors import placeholder
from mnist_assets.rebuild.automation import automation
from mnist_assets.rebuild.judgement import JUDGEMENT
from mnist_assets.settings import (
    DEFAULT_BACKOFF_SECONDS,
    DEFAULT_KEEP,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_REFRESH_CRON,
    SettingError,
)
from mnist_assets.storage.io_managers import io_managers


def configured_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """Where steps run: ``name`` or ``MNIST_ASSETS_EXECUTOR`` (:func:`mnist_assets.settings.executor`).

    In process by default: steps here are seconds of work, and a subprocess per step would cost more
    than the step. ``celery`` sends each step to a Celery worker (dagster-celery, the ``deploy`` extra),
    imported only then so the default needs none of it. Broker and result backend are the same URL
    (Redis keeps both), read from the environment when a run starts, as the workers read it from
    ``deploy/celery.yaml``.
    """
    if settings.executor(name) == "in_process":
        return dg.in_process_executor
    try:
        from dagster_celery import celery_executor
    except ImportError:
        raise SettingError(
            f"{settings.EXECUTOR}=celery needs the deploy extra: pip install 'mnist_assets[deploy]'"
        ) from None
    broker = {"env": settings.CELERY_BROKER_ENV}
    return celery_executor.configured({"broker": broker, "backend": broker}, name="celery")


def dataset_parts(
    catalog: Catalog, assets_factory=dataset_assets
) -> tuple[list[dg.AssetsDefinition | dg.SourceAsset], list[dg.AssetSpec], list[dg.AssetChecksDefinition]]:
    """The assets of every good dataset, and a placeholder with a failing check for each broken one
    (:mod:`mnist_assets.catalog_errors`): an entry can be wrong where the catalog is parsed or where its
    assets are made (training and shard settings, a ``MNIST_ASSETS_MIRROR_<DATASET>`` override).
    ``assets_factory(dataset, judgement)`` makes a dataset's assets, given rebuilding's judgement."""
    assets: list[dg.AssetsDefinition | dg.SourceAsset] = []
    errors = {dataset_id: str(error) for dataset_id, error in catalog.problems.items()}
    for dataset_id, dataset in catalog.datasets.items():
        try:
            assets += assets_factory(dataset, JUDGEMENT)
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
    read_catalog(settings.catalog_path()),
    settings.storage(),
    refresh_cron=settings.refresh_cron(),
    executor=configured_executor(),
    retry_backoff_seconds=settings.retry_backoff(),
    keep_versions=settings.keep_versions(),
    lease_seconds=settings.lease_seconds(),
)
