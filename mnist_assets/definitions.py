"""The Dagster definitions: every dataset's graph bound to the storage chosen in one place.

Settings come from the environment, read here only:
- ``MNIST_ASSETS_CATALOG``: a catalog JSON file (default: the packaged ``catalog.json``);
- ``MNIST_ASSETS_STORAGE``: where artifacts live, a directory or any fsspec URL (default ``data/artifacts``);
- ``MNIST_ASSETS_MIRROR_<DATASET>``: mirror override, read when the definitions load;
- ``MNIST_ASSETS_REFRESH_CRON``: when the daily_refresh schedule observes the sources (default 04:00 UTC).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from mnist_assets.assets import dataset_assets
from mnist_assets.automation import DEFAULT_REFRESH_CRON, automation
from mnist_assets.catalog import Dataset, load_catalog
from mnist_assets.io_managers import io_managers

DEFAULT_STORAGE = "data/artifacts"


def configured_storage() -> str:
    """Where artifacts live for this process: ``MNIST_ASSETS_STORAGE`` or ``data/artifacts``."""
    return os.environ.get("MNIST_ASSETS_STORAGE") or DEFAULT_STORAGE


def build_definitions(
    datasets: Mapping[str, Dataset],
    storage: str,
    assets_factory=dataset_assets,
    refresh_cron: str = DEFAULT_REFRESH_CRON,
) -> dg.Definitions:
    resources = io_managers(storage)
    assets = [a for dataset in datasets.values() for a in assets_factory(dataset)]
    return dg.Definitions(
        **automation(assets, resources, refresh_cron),
        resources=resources,
        # steps here are seconds of work; a subprocess per step would cost more than the step
        executor=dg.in_process_executor,
    )


defs = build_definitions(
    load_catalog(os.environ.get("MNIST_ASSETS_CATALOG") or None),
    configured_storage(),
    refresh_cron=os.environ.get("MNIST_ASSETS_REFRESH_CRON") or DEFAULT_REFRESH_CRON,
)
