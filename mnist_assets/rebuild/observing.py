"""Observing the sources without a run: each source's :class:`~mnist_assets.assets.common.Observer`
called in this process, its findings recorded as runless observation events.

A run per observation would cost a run record and an event-log database each (about half a second)
for what is a few HEAD requests and a catalog read; the stale-status resolver reads a runless
observation's data version exactly as it reads one recorded by a run. A dry run compares what it
finds with what is recorded and records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from mnist_assets.assets.common import Observer, observer_of
from mnist_assets.keys import label

Partition = tuple[dg.AssetKey, str | None]


def observers(defs: dg.Definitions, sources: Sequence[dg.AssetKey]) -> list[Observer]:
    """The observers of ``sources``: refresh calls them itself, so observing needs no run."""
    found = {
        a.key: observer
        for a in defs.assets or ()
        if isinstance(a, dg.SourceAsset) and (observer := observer_of(a)) is not None
    }
    missing = [key.to_user_string() for key in sources if key not in found]
    if missing:
        raise TypeError(
            f"source asset(s) {', '.join(missing)} have no Observer as their observe function; make them "
            "with mnist_assets.assets.common.Observer so refresh can observe them without a run"
        )
    return [found[key] for key in sources]


def record(observers: Sequence[Observer], instance: dg.DagsterInstance, warn) -> int:
    """Observe with each of ``observers`` now and record what they find as runless observations (no
    run, no event-log database per observation); how many were recorded."""
    found = [o for observer in observers for o in observer.observe(instance, warn)]
    for observation in found:
        instance.report_runless_asset_event(observation)
    return len(found)


class Sources:
    """The sources of the datasets a refresh covers, observed in this process."""

    def __init__(self, defs: dg.Definitions, keys: Sequence[dg.AssetKey]):
        self.observers = observers(defs, keys)

    def observed(self, instance: dg.DagsterInstance, log) -> list[dg.AssetObservation]:
        """What observing the sources now finds, recorded nowhere yet."""
        return [found for observer in self.observers for found in observer.observe(instance, log)]

    def record(self, instance: dg.DagsterInstance, log=print) -> None:
        """Record the sources' current data versions (catalog entries, remote files) (:func:`record`)."""
        record(self.observers, instance, log)

    def unrecorded_changes(self, instance: dg.DagsterInstance, judge, log) -> dict[Partition, str]:
        """A dry run's observation: the source partitions whose data version now differs from the one
        recorded, each with the cause it gives the partitions built from it, recorded nowhere. Their
        children are judged as a refresh would after recording it (a partition already due for another
        reason keeps that reason)."""
        changed: dict[Partition, str] = {}
        for found in self.observed(instance, log):
            key, partition = found.asset_key, found.partition
            if found.data_version != judge.get_current_data_version(key, partition).value:
                changed[(key, partition)] = (
                    f"has a new dependency data version ({label(key, partition)}), "
                    "observed by this dry run, not recorded"
                )
        return changed
