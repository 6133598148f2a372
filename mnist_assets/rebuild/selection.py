"""``mnist-assets refresh DATASET --select ASSETS``: which asset partitions a refresh visits.

The selection is Dagster's own syntax (``shards``, ``+shards`` for everything up to the shards,
``checkpoint+``, ``shards or idx``, ``key:check*``, ``group:…``), parsed and resolved by Dagster
(:meth:`dagster.AssetSelection.from_string`). Two small things are ours, because Dagster's keys carry the
dataset and its syntax has no partitions: names are written within the dataset (``shards`` means
``fashion_mnist/shards``; the full key works too), and ``NAME[P,Q]`` selects those partitions of NAME
only. What ``+`` reaches from such a partition is narrowed to the partitions linked to it (what it is
built from, what is built from it), so ``+idx[train-images]`` is that array and its gzip file, not every
file. A comma between terms means ``or``, as in ``dagster asset materialize --select``.

A name the dataset does not have, or a partition its asset does not have, is refused with the valid
ones: a typo must not silently select nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import dagster as dg

from mnist_assets.keys import partition_keys

Partition = tuple[dg.AssetKey, str | None]

# one term of the text at a time: a quoted string, attribute:value, a name (with [partitions]), a comma
_TERM = re.compile(
    r'(?P<quoted>"[^"]*")'
    r'|(?P<attribute>[A-Za-z_]+):(?P<value>"[^"]*"|[^\s()",\[]+)(?:\[(?P<value_parts>[^\]]*)\])?'
    r"|(?P<name>[A-Za-z_][\w/]*)(?![\w/])(?:\[(?P<parts>[^\]]*)\])?"
    r"|(?P<comma>,)"
)
_KEYWORDS = {"and", "or", "not", "sinks", "roots"}
EXAMPLES = "e.g. shards, +shards, checkpoint[cnn], 'shards or idx'"


def in_datasets(text: str, datasets: Iterable[str], graph) -> set[Partition]:
    """What ``text`` selects in each of ``datasets``: the same names, each dataset's own assets."""
    return set().union(*(selected(text, dataset, graph) for dataset in datasets))


def described(partitions: Iterable[Partition]) -> str:
    """``ds/asset[p,q], ds/other`` (by name): what a refresh says it will judge."""
    by_asset: dict[str, list[str]] = {}
    for key, partition in sorted(partitions, key=lambda kp: (kp[0].to_user_string(), kp[1] or "")):
        by_asset.setdefault(key.to_user_string(), []).extend([partition] if partition else [])
    return ", ".join(asset + (f"[{','.join(p)}]" if p else "") for asset, p in by_asset.items())


def selected(text: str, dataset: str, graph) -> set[Partition]:
    """The asset partitions of ``dataset`` that ``text`` selects (``graph``: the definitions' asset graph)."""
    names = {key.path[-1]: key for key in graph.get_all_asset_keys() if key.path[0] == dataset}
    rewritten, whole, narrowed = _in_dataset(text, dataset, names, graph)
    try:
        keys = dg.AssetSelection.from_string(rewritten).resolve(graph, allow_missing=True)
    except Exception:  # Dagster's own message would quote the rewritten text
        raise ValueError(f"--select {text!r} is not a Dagster asset selection ({EXAMPLES})") from None
    keys = {key for key in keys if key.path[0] == dataset and graph.get(key).is_materializable}
    if not keys:
        raise ValueError(f"--select {text!r} selects no asset of {dataset}; it has {_listed(names)}")
    linked = _linked(graph, keys, narrowed)
    return {
        (key, partition)
        for key in keys
        for partition in _partitions(graph, key)
        if _kept(key, partition, whole, narrowed, linked)
    }


def _in_dataset(
    text: str, dataset: str, names: dict[str, dg.AssetKey], graph
) -> tuple[str, set[dg.AssetKey], dict[dg.AssetKey, set[str]]]:
    """``text`` with every name made a key of ``dataset`` and its ``[partitions]`` taken out; the keys
    named without brackets (all their partitions), and the partitions each bracketed name asks for."""
    whole: set[dg.AssetKey] = set()
    narrowed: dict[dg.AssetKey, set[str]] = {}

    def rewrite(match: re.Match) -> str:
        if match["comma"]:
            return " or "
        if match["name"] and match["name"].lower() not in _KEYWORDS:
            name, parts = match["name"], match["parts"]
        elif match["attribute"] == "key":
            name, parts = match["value"].strip('"'), match["value_parts"]
        else:
            return match[0]
        name = name.removeprefix(f"{dataset}/")
        if "*" in name and parts is not None:
            raise ValueError(f"--select: partitions in brackets need one asset's name, not {name}[{parts}]")
        if "*" not in name:
            key = _known(name, dataset, names)
            if parts is None:
                whole.add(key)
            else:
                narrowed.setdefault(key, set()).update(_known_partitions(key, parts, graph))
        return f'key:"{dataset}/{name}"'

    return _TERM.sub(rewrite, text), whole, narrowed


def _known(name: str, dataset: str, names: dict[str, dg.AssetKey]) -> dg.AssetKey:
    if name not in names:
        raise ValueError(f"--select: {dataset} has no asset {name!r}; it has {_listed(names)}")
    return names[name]


def _known_partitions(key: dg.AssetKey, parts: str, graph) -> set[str]:
    asked = {part.strip() for part in parts.split(",") if part.strip()}
    valid = _partitions(graph, key)
    unknown = sorted(asked - set(valid))
    if unknown or not asked:
        listed = ", ".join(p for p in valid if p) or "none (it is not partitioned: drop the brackets)"
        found = f"no partition {', '.join(unknown)}" if unknown else "no partition in [] (name one)"
        raise ValueError(f"--select: {key.to_user_string()} has {found}; its partitions: {listed}")
    return asked


def _partitions(graph, key: dg.AssetKey) -> list[str | None]:
    return partition_keys(graph.get(key).partitions_def)


def _linked(graph, keys: set[dg.AssetKey], narrowed: dict[dg.AssetKey, set[str]]) -> set[Partition]:
    """The selected partitions upstream or downstream of a bracketed one, through selected assets."""
    start: set[Partition] = {(key, p) for key, parts in narrowed.items() if key in keys for p in parts}
    linked: set[Partition] = set()
    for step in (_parents_of, _children_of):  # each way on its own: a parent's other children are not linked
        found: set[Partition] = set()
        frontier = set(start)
        while frontier:
            found.add(partition := frontier.pop())
            frontier |= {(k, p) for k, p in step(graph, *partition) if k in keys} - found
        linked |= found
    return linked


def _parents_of(graph, key: dg.AssetKey, partition: str | None) -> Iterable[Partition]:
    parents = graph.get_parents_partitions(key, partition).parent_partitions
    return [(p.asset_key, p.partition_key) for p in parents]


def _children_of(graph, key: dg.AssetKey, partition: str | None) -> Iterable[Partition]:
    return [(c.asset_key, c.partition_key) for c in graph.get_children_partitions(key, partition)]


def _kept(key, partition, whole: set, narrowed: dict, linked: set[Partition]) -> bool:
    """A bracketed asset keeps its partitions; one named whole keeps all; one reached by ``+`` from a
    bracketed partition keeps the partitions linked to it; anything else selected keeps all."""
    if key in narrowed and key not in whole:
        return partition in narrowed[key]
    if key in whole or not any(k == key for k, _ in linked):
        return True
    return (key, partition) in linked


def _listed(names: dict[str, dg.AssetKey]) -> str:
    return ", ".join(sorted(names))
