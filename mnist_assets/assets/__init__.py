"""The asset graph of one dataset: urls → raw_gzip → idx → shards → checkpoint[model] → best_model.

Every dataset gets the same graph, built from its catalog entry, under its own key prefix and group.
One module per stage (:mod:`~mnist_assets.assets.raw`: urls, raw_gzip, idx;
:mod:`~mnist_assets.assets.splits`: shards; :mod:`~mnist_assets.assets.checkpoints`: model_configs,
checkpoint, best_model), what they share in :mod:`~mnist_assets.assets.common`, the whole graph in
:mod:`~mnist_assets.assets.graph`, and what the UI shows in :mod:`~mnist_assets.assets.metadata` and
:mod:`~mnist_assets.assets.pictures`. Each stage's work is a module-level function over plain values
(a dataset, a partition key, arrays, a store), callable in a test without Dagster; the ``*_asset``
factories only wire it into Dagster (keys, partitions, checks, descriptions). Each asset returns a
content data version, so an identical result leaves downstream assets fresh, and carries a code version
hashed from the code that computes it (its body function, the helpers it ``uses`` and its blocking
checks).
"""

from mnist_assets.assets.graph import dataset_assets, materialization_steps
from mnist_assets.models import TrainConfig

__all__ = ["TrainConfig", "dataset_assets", "materialization_steps"]
