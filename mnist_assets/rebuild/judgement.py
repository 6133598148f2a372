"""Rebuilding's judgement as the asset graph's steps ask for it: is a partition fresh, what last failed.

The assets and storage sit below :mod:`mnist_assets.rebuild`, so they do not import it; the definitions
hand :data:`JUDGEMENT` to the graph (:func:`mnist_assets.assets.dataset_assets`), whose steps call it: a
step that waited for another process's lease reuses that result when :func:`fresh` says so
(:func:`mnist_assets.storage.leases.shared_step`), and best_model leaves out a configuration whose
:func:`last_failure` is a failure.
"""

from __future__ import annotations

import dagster as dg

from mnist_assets.assets.common import Judgement
from mnist_assets.rebuild import attempts, staleness


def fresh(context: dg.AssetExecutionContext, store: staleness.Store, partition: str | None) -> bool:
    """Whether the step's partition needs no rebuild now, judged as refresh and the sensor judge it."""
    judge = staleness.resolver(context.instance, context.job_def.asset_layer.asset_graph)
    return not staleness.causes(judge, store, context.asset_key, partition)


def last_failure(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> str | None:
    """The partition's last attempt, in one line, when it failed (:func:`attempts.last_failure`)."""
    failure = attempts.last_failure(instance, key, partition)
    return failure.describe() if failure else None


JUDGEMENT = Judgement(fresh=fresh, last_failure=last_failure)
