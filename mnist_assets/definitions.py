"""The Dagster definitions: every dataset's graph bound to the storage chosen in one place.

Settings come from the environment, read here only:
- ``MNIST_ASSETS_CATALOG``: a catalog JSON file (default: the packaged ``catalog.json``);
- ``MNIST_ASSETS_STORAGE``: where artifacts live, a directory or any fsspec URL (default ``data/artifacts``);
- ``MNIST_ASSETS_MIRROR_<DATASET>``: mirror override, read when a dataset's ``urls`` asset runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from mnist_assets.assets import dataset_assets
from mnist_assets.catalog import Dataset, load_catalog
from mnist_assets.io_managers import io_managers

DEFAULT_STORAGE = "data/artifacts"


def build_definitions(
    datasets: Mapping[str, Dataset], storage: str, assets_factory=dataset_assets
) -> dg.Definitions:
    return dg.Definitions(
        assets=[a for dataset in datasets.values() for a in assets_factory(dataset)],
        resources=io_managers(storage),
        # steps here are seconds of work; a subprocess per step would cost more than the step
        executor=dg.in_process_executor,
    )


defs = build_definitions(
    load_catalog(os.environ.get("MNIST_ASSETS_CATALOG") or None),
    os.environ.get("MNIST_ASSETS_STORAGE") or DEFAULT_STORAGE,
)
