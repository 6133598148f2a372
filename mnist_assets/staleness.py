"""Whether an asset partition must be rebuilt, and why: one judgement for the CLI, the sensor and status.

Dagster's own stale status (the resolver the UI uses: code version against the one recorded,
dependency data versions against the provenance recorded) says what the event log knows; the
storage says whether the artifact is really there. A partition needs a rebuild when either says so.
Staleness here is one hop, as in Dagster: a partition is stale when its own inputs or code changed,
not because something upstream is about to be rebuilt (that rebuild may reproduce the same content).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from mnist_assets.dagster_private import StaleStatus, StaleStatusResolver, stale_status_resolver

Stores = Mapping[dg.AssetKey, "object"]
"""Asset key → the IO manager that stores it (anything with ``exists`` and ``location``)."""


def stores_of(assets, resources: Mapping[str, object]) -> dict[dg.AssetKey, object]:
    """The store of every materializable asset among ``assets``, from its IO manager key."""
    return {
        key: resources[a.get_io_manager_key_for_asset_key(key)]
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for key in a.keys
    }


resolver = stale_status_resolver
"""A fresh view of the event log; it caches, so make one per decision point."""


def _describe(cause) -> str:
    if cause.dependency is None:
        return cause.reason
    dependency = cause.dependency.asset_key.to_user_string()
    if cause.dependency.partition_key:
        dependency += f"[{cause.dependency.partition_key}]"
    return f"{cause.reason} ({dependency})"


def causes(
    resolver: StaleStatusResolver, store, key: dg.AssetKey, partition: str | None, verify: bool = False
) -> list[str]:
    """Why this partition must be rebuilt; empty when it is fresh.

    ``verify`` also loads the artifact and checks it against its record (reads every byte), which
    finds files damaged in place; without it only presence and recorded sizes are checked.
    """
    status = resolver.get_status(key, partition)
    if status == StaleStatus.MISSING:
        return ["never materialized"]
    if not store.exists(key, partition):
        return [f"artifact missing from storage ({store.location(key, partition)})"]
    if verify and (problem := store.verify(key, partition)):
        return [f"artifact damaged in storage: {problem}"]
    if status == StaleStatus.STALE:
        return [_describe(cause) for cause in resolver.get_stale_causes(key, partition)] or ["stale"]
    return []


class NeedsRebuild(dg.AutomationCondition):
    """True for the partitions :func:`causes` finds a reason to rebuild (the causes go to the UI).

    Holds every materializable asset's store, so it can also judge dependencies; sources and
    assets it does not store are never rebuilt by it.
    """

    def __init__(self, stores: Stores):
        self.stores = stores

    @property
    def name(self) -> str:
        return "needs_rebuild"

    @property
    def description(self) -> str:
        return "missing, stale (code or input data version) or gone from storage"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        store = self.stores.get(context.key)
        if store is None:
            return dg.AutomationResult(context=context, true_subset=context.get_empty_subset())
        judge = resolver(context.asset_graph_view.instance, context.asset_graph, context.asset_graph_view)
        subset = context.candidate_subset
        partitions = sorted(subset.expensively_compute_partition_keys()) if subset.is_partitioned else [None]
        found = {p: c for p in partitions if (c := causes(judge, store, context.key, p))}
        if subset.is_partitioned:
            true_subset = context.asset_graph_view.get_subset_from_partition_keys(
                key=context.key, partitions_def=context.partitions_def, partition_keys=set(found)
            )
        else:
            true_subset = subset if found else context.get_empty_subset()
        return dg.AutomationResult(
            context=context,
            true_subset=true_subset,
            metadata={"causes": dg.MetadataValue.json({p or "-": c for p, c in found.items()})}
            if found
            else {},
        )
