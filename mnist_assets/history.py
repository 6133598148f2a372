"""Kept versions as Dagster knows them: ``history``, ``rollback`` and ``gc`` for the command line.

Storage keeps the versions (:mod:`mnist_assets.storage.versions`); the event log says what each one was. Every
materialization's metadata names the version it stored, so a version's data version and metrics come
from the materialization that recorded it. A rollback is recorded as a new materialization carrying
the original one's tags: its data version, code version and input data versions (the provenance
Dagster's stale-status resolver reads, ``DataProvenance.from_tags``), so what was built from the
restored content is fresh and what was built from other content is stale, exactly as if it had just
been materialized again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from mnist_assets import tags
from mnist_assets.catalog_errors import catalog_errors
from mnist_assets.keys import label, partition_keys
from mnist_assets.rebuild.staleness import stores_of
from mnist_assets.storage import versions
from mnist_assets.storage.artifact_io import ArtifactIOManager

METRICS = {
    "test_accuracy": "test_accuracy",
    "holdout_accuracy": "holdout_accuracy",
    "parameter_count": "parameter_count",
    "bytes": "bytes",
    tags.ROW_COUNT: "rows",
}
"""Metadata shown per version (checkpoints: accuracy and size of the model; others: bytes and rows)."""
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Version:
    version: str
    committed_at: str
    data_version: str
    """From the materialization that stored it; ``unknown`` when that event is gone from the log."""
    current: bool
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """One asset partition of the definitions, with the IO manager that stores it."""

    key: dg.AssetKey
    partition: str | None
    store: ArtifactIOManager

    @property
    def label(self) -> str:
        return label(self.key, self.partition)

    def artifact(self) -> versions.Artifact:
        return self.store.artifact(self.key, self.partition)


def target(defs: dg.Definitions, dataset: str, asset: str, partition: str | None) -> Target:
    """The asset partition a person named, or a ValueError that says what exists."""
    if error := catalog_errors(defs).get(dataset):
        raise ValueError(error)
    key = dg.AssetKey([dataset, asset])
    stores = stores_of(defs.assets or (), defs.resources or {})
    store = stores.get(key)
    if not isinstance(store, ArtifactIOManager):
        known = sorted({k.path[-1] for k in stores if k.path[0] == dataset})
        raise ValueError(
            f"{key.to_user_string()} is not a stored asset; "
            + (f"{dataset} has {', '.join(known)}" if known else f"the catalog has no dataset {dataset!r}")
        )
    partitions_def = defs.resolve_asset_graph().get(key).partitions_def
    keys = list(partitions_def.get_partition_keys()) if partitions_def else []
    if (partition is None and keys) or (partition is not None and partition not in keys):
        expected = f"one of {', '.join(keys)}" if keys else "none (it is not partitioned)"
        raise ValueError(f"{key.to_user_string()}: partition {partition!r} is not one; name {expected}")
    return Target(key, partition, store)


def _materializations(instance: dg.DagsterInstance, where: Target) -> dict[str, Any]:
    """Version id → the newest materialization whose metadata names it."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=where.key, asset_partitions=[where.partition] if where.partition else None
        ),
        limit=1000,
    ).records
    found: dict[str, Any] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        value = materialization.metadata.get("version") if materialization else None
        if value is not None:
            found.setdefault(str(value.value), materialization)
    return found


def history(instance: dg.DagsterInstance, where: Target) -> list[Version]:
    """Every kept version, newest first."""
    artifact = where.artifact()
    events, current = _materializations(instance, where), artifact.current_version()
    rows = []
    for version in reversed(artifact.versions()):
        event = events.get(version)
        metadata = event.metadata if event else {}
        rows.append(
            Version(
                version=version,
                committed_at=versions.committed_at(version).isoformat(timespec="seconds"),
                data_version=(event.tags or {}).get(tags.DATA_VERSION, UNKNOWN) if event else UNKNOWN,
                current=version == current,
                metrics={shown: metadata[key].value for key, shown in METRICS.items() if key in metadata},
            )
        )
    return rows


def resolve(rows: list[Version], wanted: str) -> Version:
    """The kept version ``wanted`` names: its id, or a unique prefix of its id or of its data version."""
    exact = [row for row in rows if row.version == wanted]
    matches = exact or [
        row
        for row in rows
        if row.version.startswith(wanted)
        or (row.data_version != UNKNOWN and row.data_version.startswith(wanted))
    ]
    if len(matches) == 1:
        return matches[0]
    kept = ", ".join(row.version for row in rows) or "none"
    if not matches:
        raise ValueError(f"no kept version matches {wanted!r}; kept: {kept}")
    raise ValueError(f"{wanted!r} matches {len(matches)} versions; give more of it (kept: {kept})")


def rollback(instance: dg.DagsterInstance, where: Target, wanted: str) -> dict[str, Any]:
    """Make a kept version current (verified first) and record it as a materialization.

    Storage first, then the event: if the process dies in between, storage holds the version while the
    event log still names the one before, and staleness judges by the latter. ``history`` then shows
    the version current; running the same rollback again (it is idempotent) records the event.
    """
    chosen = resolve(history(instance, where), wanted)
    original = _materializations(instance, where).get(chosen.version)
    if original is None:
        raise ValueError(
            f"{where.label}: version {chosen.version} has no materialization left in the event log, so "
            "its data version and provenance are unknown; materialize the asset instead"
        )
    try:
        previous = versions.rollback(where.artifact(), chosen.version)
    except versions.VersionError as error:
        raise ValueError(f"{where.label}: {error}") from error
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=where.key,
            partition=where.partition,
            description=f"rolled back to version {chosen.version} (was {previous or 'none'})",
            metadata={**original.metadata, "version": chosen.version, "rolled_back_from": previous or "none"},
            tags=dict(original.tags or {}),
        )
    )
    return {
        "asset": where.label,
        "version": chosen.version,
        "data_version": chosen.data_version,
        "rolled_back_from": previous,
    }


def collect(defs: dg.Definitions, datasets: list[str], dry_run: bool) -> list[versions.Removed]:
    """``gc``: what no kept version (nor the current one) names, in every asset partition of ``datasets``
    (all when empty), deleted unless ``dry_run``."""
    graph = defs.resolve_asset_graph()
    stores = stores_of(defs.assets or (), defs.resources or {})
    known = sorted({key.path[0] for key in stores})
    if broken := [error for dataset, error in catalog_errors(defs).items() if dataset in datasets]:
        raise ValueError(broken[0])  # gc of all datasets leaves a broken one's files alone
    if unknown := sorted(set(datasets) - set(known)):
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; the catalog has {', '.join(known)}")
    removed: list[versions.Removed] = []
    for key in sorted(stores, key=lambda k: k.to_user_string()):
        store = stores[key]
        if (datasets and key.path[0] not in datasets) or not isinstance(store, ArtifactIOManager):
            continue
        for partition in partition_keys(graph.get(key).partitions_def):
            artifact = store.artifact(key, partition)
            removed += versions.collect(artifact, dry_run, store.grace_seconds)
    return removed
