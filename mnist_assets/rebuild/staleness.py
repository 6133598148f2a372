"""Whether an asset partition must be rebuilt, and why: one judgement for the CLI, the sensor and status.

Dagster's own stale status (the resolver the UI uses: code version against the one recorded,
dependency data versions against the provenance recorded) says what the event log knows; the
storage says whether the artifact is really there. A partition needs a rebuild when either says so.
Staleness here is one hop, as in Dagster: a partition is stale when its own inputs or code changed,
not because something upstream is about to be rebuilt (that rebuild may reproduce the same content).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import dagster as dg

from mnist_assets.dagster_private import StaleStatus, StaleStatusResolver, stale_status_resolver
from mnist_assets.keys import label

if TYPE_CHECKING:
    from upath import UPath


@runtime_checkable
class Store(Protocol):
    """What staleness needs of an IO manager (``io_managers.ArtifactIOManager`` is one)."""

    def exists(self, asset_key: dg.AssetKey, partition: str | None) -> bool: ...

    def location(self, asset_key: dg.AssetKey, partition: str | None) -> UPath: ...

    def verify(self, asset_key: dg.AssetKey, partition: str | None) -> str | None: ...


Stores = Mapping[dg.AssetKey, Store]
"""Asset key → the IO manager that stores it."""


def _store(resources: Mapping[str, object], io_manager_key: str) -> Store:
    resource = resources.get(io_manager_key)
    if not isinstance(resource, Store):
        raise TypeError(
            f"resource {io_manager_key!r} is not an artifact store (exists, location, verify): {resource!r}"
        )
    return resource


def stores_of(assets: Iterable[object], resources: Mapping[str, object]) -> dict[dg.AssetKey, Store]:
    """The store of every materializable asset among ``assets``, from its IO manager key."""
    return {
        key: _store(resources, a.get_io_manager_key_for_asset_key(key))
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for key in a.keys
    }


resolver = stale_status_resolver
"""A fresh view of the event log; it caches, so make one per decision point."""


def _describe(cause) -> str:
    if cause.dependency is None:
        return cause.reason
    return f"{cause.reason} ({label(cause.dependency.asset_key, cause.dependency.partition_key)})"


def causes(
    resolver: StaleStatusResolver,
    store: Store,
    key: dg.AssetKey,
    partition: str | None,
    verify: bool = False,
    rebuilt_first: Collection[tuple[dg.AssetKey, str | None]] | None = None,
) -> list[str]:
    """Why this partition must be rebuilt; empty when it is fresh.

    ``verify`` also loads the artifact and checks it against its record (reads every byte), which
    finds files damaged in place; without it only presence and recorded sizes are checked.
    ``rebuilt_first``: inputs rebuilt before it in the same run; then only the causes that stand
    whatever they produce count (a cause naming one of them, or inherited from upstream, may vanish
    when a rebuild reproduces what it was built from, as after a rollback).
    """
    status = resolver.get_status(key, partition)
    if status == StaleStatus.MISSING:
        return ["never materialized"]
    if not store.exists(key, partition):
        return [f"artifact missing from storage ({store.location(key, partition)})"]
    if verify and (problem := store.verify(key, partition)):
        return [f"artifact damaged in storage: {problem}"]
    if status != StaleStatus.STALE:
        return []
    found = resolver.get_stale_causes(key, partition)
    if rebuilt_first is None:
        return [_describe(cause) for cause in found] or ["stale"]
    return [_describe(cause) for cause in found if _stands(cause, (key, partition), rebuilt_first)]


def _stands(cause, partition: tuple[dg.AssetKey, str | None], rebuilt_first: Collection) -> bool:
    """Whether ``cause`` is this partition's own and names none of the partitions rebuilt before it."""
    if (cause.key.asset_key, cause.key.partition_key) != partition:
        return False
    dependency = cause.dependency
    return dependency is None or (dependency.asset_key, dependency.partition_key) not in rebuilt_first


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
        if subset.is_partitioned:
            partitions_def = context.partitions_def
            assert partitions_def is not None, "a partitioned subset belongs to a partitioned asset"
            found = {
                p: c
                for p in sorted(subset.expensively_compute_partition_keys())
                if (c := causes(judge, store, context.key, p))
            }
            true_subset = context.asset_graph_view.get_subset_from_partition_keys(
                key=context.key, partitions_def=partitions_def, partition_keys=set(found)
            )
        else:
            found = {"-": c} if (c := causes(judge, store, context.key, None)) else {}
            true_subset = subset if found else context.get_empty_subset()
        return dg.AutomationResult(
            context=context,
            true_subset=true_subset,
            metadata={"causes": dg.MetadataValue.json(found)} if found else {},
        )
