"""Every use of Dagster's private modules, in one place, each beside the public API that is missing.

Dagster 1.13 keeps two things we need behind ``dagster._…`` modules. An upgrade that moves them breaks
the imports of this file and nothing else; ``test_dagster_private.py`` exercises every name here
against a real instance and fails if a private import appears anywhere else in the package.

1. The stale-status resolver (``CachingStaleStatusResolver``, ``StaleStatus`` and the
   ``AssetGraphView`` it reads through). Missing public API: asking "is this asset partition stale,
   and why?" for a definitions object and an instance. The UI and the declarative automation use this
   very resolver internally; ``refresh``, ``status`` and the sensor must agree with the UI, so they use
   it too instead of re-deriving staleness from the event log.
2. The tag that carries an observation's data version (``DATA_VERSION_TAG``, ``dagster/data_version``).
   Missing public API: ``dg.AssetObservation`` takes no data version, yet the stale-status resolver
   reads a source's version from that tag of its latest observation. ``refresh`` and the daily
   schedule compute the sources' versions with plain functions and record them as runless
   observations (``instance.report_runless_asset_event``), with no run and no event-log database per
   observation; an observable source's own observe function writes the same tag the same way.
3. The implicit asset job as a ``ReconstructableJob`` (``ReconstructableRepository``). Missing public
   API: ``dg.reconstructable`` refuses that job (its name is reserved), yet it is the only job that
   spans assets with different partitions; on another executor (Celery) every worker rebuilds it by
   importing the definitions module.

Also private, outside Python: ``dagster.yaml`` names ``dagster._core.storage.root`` and
``dagster._core.storage.local_compute_log_manager`` (Dagster's documented way to configure where the
instance keeps artifacts and compute logs); the test imports those too.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.data_version import DATA_VERSION_TAG, CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

__all__ = [
    "DATA_VERSION_TAG",
    "AssetGraphView",
    "StaleStatus",
    "StaleStatusResolver",
    "observation",
    "reconstructable_asset_job",
    "stale_status_resolver",
]

StaleStatusResolver = CachingStaleStatusResolver


def stale_status_resolver(
    instance: dg.DagsterInstance, asset_graph, view: AssetGraphView | None = None
) -> CachingStaleStatusResolver:
    """The resolver the UI uses, over the event log as it is now (it caches: make one per decision)."""
    view = view or AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def reconstructable_asset_job(module: str, attribute: str = "defs") -> ReconstructableJob:
    """The implicit asset job of the ``Definitions`` at ``module.attribute``, rebuilt by importing it."""
    repository = ReconstructableRepository.for_module(module, attribute)
    return repository.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)


def observation(
    asset_key: dg.AssetKey, partition: str | None, data_version: str, metadata: dict
) -> dg.AssetObservation:
    """An observation of ``asset_key[partition]`` carrying ``data_version`` as the stale-status resolver
    reads it (what Dagster's own observe writes), to report as a runless event or log in a run."""
    return dg.AssetObservation(
        asset_key=asset_key, partition=partition, tags={DATA_VERSION_TAG: data_version}, metadata=metadata
    )
