"""An asset partition as people name it, and the partitions an asset has: one function each.

Every message, lease and step names a partition the same way (``dataset/asset[partition]``, plain
``dataset/asset`` when unpartitioned), and every walk over an asset's partitions treats an
unpartitioned asset as the one partition ``None``.
"""

from __future__ import annotations

import dagster as dg


def label(key: dg.AssetKey | str, partition: str | None) -> str:
    """``dataset/asset[partition]``, as people write it (``key``: an asset key or its user string)."""
    name = key.to_user_string() if isinstance(key, dg.AssetKey) else key
    return name + (f"[{partition}]" if partition else "")


def partition_keys(partitions_def: dg.PartitionsDefinition | None) -> list[str | None]:
    """The asset's partition keys, or ``[None]`` for an unpartitioned asset (its one partition)."""
    return list(partitions_def.get_partition_keys()) if partitions_def else [None]
