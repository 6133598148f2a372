"""A dataset whose catalog entry is wrong, as the definitions show it: a placeholder in its group.

One bad entry must not take the other datasets down, nor the whole code location in Dagster's UI. For
each broken dataset the definitions hold an external asset ``<dataset>/catalog_error`` (in the dataset's
group) whose description is the one-line error, and an asset check that fails with that line when it
runs. Nothing else of the dataset exists until its entry is fixed. The command line reads the lines
back with :func:`catalog_errors` and prints them instead of running anything for those datasets.
"""

from __future__ import annotations

import dagster as dg

from mnist_assets.catalog import CatalogError, validate_dataset_id
from mnist_assets.hashing import sha256
from mnist_assets.tags import CATALOG_DATASET, CATALOG_ERROR

ERROR_ASSET = "catalog_error"
INVALID_IDS = "invalid_dataset_ids"
ERROR_CHECK = "catalog_entry_is_valid"


def placeholder(dataset_id: str, line: str) -> tuple[dg.AssetSpec, dg.AssetChecksDefinition]:
    """The broken dataset's placeholder asset and its failing check, both carrying ``line``. An entry
    listed under a key that is no dataset id (``"Bad/Id"``) cannot name a Dagster group or asset: its
    placeholder lives in the group ``invalid_dataset_ids``, named by a hash of the key."""
    try:
        group = validate_dataset_id(dataset_id)
        key = dg.AssetKey([dataset_id, ERROR_ASSET])
    except CatalogError:
        group = INVALID_IDS
        key = dg.AssetKey([INVALID_IDS, "id_" + sha256(dataset_id.encode())[:12]])
    spec = dg.AssetSpec(
        key,
        group_name=group,
        description=f"This dataset cannot be built until its catalog entry is fixed: {line}",
        metadata={CATALOG_ERROR: line, CATALOG_DATASET: dataset_id},
    )

    @dg.asset_check(asset=key, name=ERROR_CHECK, description=line)
    def catalog_entry_is_valid() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=line)

    return spec, catalog_entry_is_valid


def catalog_errors(defs: dg.Definitions) -> dict[str, str]:
    """Each broken dataset of ``defs`` and its one-line error."""
    graph = defs.resolve_asset_graph()
    errors = {}
    for key in graph.get_all_asset_keys():
        metadata = graph.get(key).metadata
        if (line := metadata.get(CATALOG_ERROR)) is not None:
            dataset = metadata[CATALOG_DATASET]
            # TextMetadataValues once the definitions resolved them
            errors[str(getattr(dataset, "value", dataset))] = str(getattr(line, "value", line))
    return errors
