"""Materialize exactly what is stale or missing, per asset and partition, in one process.

What needs a rebuild is judged by :mod:`mnist_assets.staleness` (Dagster's stale status plus storage),
the same judgement the automation sensor uses. Sources are observed first, so a changed catalog entry
or remote file is seen. Assets are visited upstream first and each partition is judged right before
it would run, so a rebuild that reproduces identical content (same data version) leaves everything
downstream alone.
A failed partition is reported and keeps its last good artifact; the others still refresh.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import dagster as dg

from mnist_assets import staleness
from mnist_assets.dagster_private import observe_sources


@dataclass
class Step:
    asset: str
    partition: str | None
    causes: list[str]
    seconds: float | None = None
    error: str | None = None


@dataclass
class Summary:
    datasets: list[str]
    dry_run: bool
    ran: list[Step] = field(default_factory=list)
    waiting_on_upstream: list[Step] = field(default_factory=list)
    failed: list[Step] = field(default_factory=list)
    fresh: int = 0
    seconds: float = 0.0
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _failure_message(result) -> str:
    """The first failed step's error message: what the asset raised, not a Dagster traceback."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
                error = error.cause
            message = error.message.strip()
            if error.cls_name == "Failure":  # raised on purpose: its text is the whole story
                message = message.split(": ", 1)[-1]
            return message
    return "the run failed (see the Dagster event log)"


class Refresher:
    """Judges and runs the assets of some datasets against one instance and one set of definitions."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, datasets: Sequence[str]):
        self.defs, self.instance = defs, instance
        self.graph = defs.resolve_asset_graph()
        known = {k.path[0] for k in self.graph.get_all_asset_keys()}
        unknown = sorted(set(datasets) - known)
        if unknown:
            raise ValueError(
                f"unknown dataset(s) {', '.join(unknown)}; the catalog has {', '.join(sorted(known))}"
            )
        self.datasets = list(datasets) or sorted(known)
        ours = [k for k in self.graph.toposorted_asset_keys if k.path[0] in self.datasets]
        self.keys = [k for k in ours if self.graph.get(k).is_materializable]
        self.sources = [k for k in ours if self.graph.get(k).is_observable]
        self.stores = staleness.stores_of(defs.assets, defs.resources)

    def partitions(self, key: dg.AssetKey) -> list[str | None]:
        partitions_def = self.graph.get(key).partitions_def
        return list(partitions_def.get_partition_keys()) if partitions_def else [None]

    def run(self, dry_run: bool = False, verify: bool = False, log=print) -> Summary:
        started = time.perf_counter()
        summary = Summary(datasets=self.datasets, dry_run=dry_run)
        job = self.defs.resolve_implicit_global_asset_job_def()
        planned: set[tuple[dg.AssetKey, str | None]] = set()
        self.observe()  # a dry run too: the plan must reflect the catalog as it is now
        judge = staleness.resolver(self.instance, self.graph)
        for key in self.keys:
            for partition in self.partitions(key):
                causes = staleness.causes(judge, self.stores[key], key, partition, verify=verify)
                step = Step(key.to_user_string(), partition, causes)
                if not causes:
                    if dry_run and self._has_planned_parent(key, partition, planned):
                        step.causes = ["runs if its upstream's content changes"]
                        summary.waiting_on_upstream.append(step)
                        planned.add((key, partition))
                    else:
                        summary.fresh += 1
                    continue
                planned.add((key, partition))
                summary.ran.append(step)
                label = f"{step.asset}" + (f"[{partition}]" if partition else "")
                log(f"{'would run' if dry_run else 'running'} {label}: {'; '.join(causes)}")
                if not dry_run:
                    t0 = time.perf_counter()
                    result = job.execute_in_process(
                        asset_selection=[key],
                        partition_key=partition,
                        instance=self.instance,
                        raise_on_error=False,
                    )
                    step.seconds = round(time.perf_counter() - t0, 3)
                    judge = staleness.resolver(self.instance, self.graph)  # the event log moved on
                    if not result.success:  # the last good artifact stays; the rest still refreshes
                        step.error = _failure_message(result)
                        summary.ran.remove(step)
                        summary.failed.append(step)
                        log(f"FAILED {label}: {step.error}")
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.artifacts = self.artifacts()
        return summary

    def observe(self) -> None:
        """Record the sources' current data versions (catalog entries, remote files) first."""
        if self.sources:
            observe_sources([self.defs.resolve_assets_def(k) for k in self.sources], self.instance)

    def _has_planned_parent(self, key, partition, planned) -> bool:
        for parent in self.graph.get(key).parent_keys:
            for parent_partition in self.partitions(parent):
                if (parent, parent_partition) not in planned:
                    continue
                children = self.graph.get_children_partitions(parent, parent_partition)
                if any(c.asset_key == key and c.partition_key == partition for c in children):
                    return True
        return False

    def artifacts(self) -> dict[str, dict[str, str]]:
        """Where every asset partition of the datasets lives (whether or not it exists yet)."""
        return {
            key.to_user_string(): {
                partition or "-": str(self.stores[key].location(key, partition))
                for partition in self.partitions(key)
            }
            for key in self.keys
        }


def refresh(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    datasets: Iterable[str] = (),
    dry_run: bool = False,
    verify: bool = False,
    log=print,
) -> Summary:
    return Refresher(defs, instance, list(datasets)).run(dry_run=dry_run, verify=verify, log=log)
