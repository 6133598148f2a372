"""A dataset's whole graph: every stage's assets, and the runs that build it upstream first."""

import dagster as dg

from mnist_assets import models, shards
from mnist_assets.assets.checkpoints import best_model_asset, checkpoint_asset, model_configs_asset
from mnist_assets.assets.common import FILES, Judgement
from mnist_assets.assets.raw import idx_asset, raw_gzip_asset, urls_asset
from mnist_assets.assets.splits import shards_asset
from mnist_assets.catalog import Dataset


def dataset_assets(dataset: Dataset, judgement: Judgement) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """The assets of ``dataset``, keyed ``<dataset.id>/<name>`` and grouped by dataset; their steps ask
    rebuilding's ``judgement`` (:data:`mnist_assets.rebuild.judgement.JUDGEMENT`) what is fresh and what
    last failed."""
    mirrors, configs = dataset.resolve_mirrors(), models.training_configs(dataset)
    return [
        urls_asset(dataset, mirrors),
        raw_gzip_asset(dataset, mirrors, judgement),
        idx_asset(dataset, judgement),
        shards_asset(dataset, judgement),
        model_configs_asset(dataset, configs),
        checkpoint_asset(dataset, configs, judgement),
        best_model_asset(dataset, judgement),
    ]


def materialization_steps(dataset: Dataset) -> list[tuple[tuple[str, ...], str | None]]:
    """(asset names, partition) runs that build a dataset's whole graph, upstream first.

    One run per partition, because a run's data version applies to every partition it writes;
    the README's CLI commands are these same steps.
    """
    return [
        *((("raw_gzip", "idx"), key) for key in FILES.get_partition_keys()),
        *((("shards",), split) for split in shards.SPLITS),
        *((("checkpoint",), name) for name in dataset.model_names),
        (("best_model",), None),
    ]
