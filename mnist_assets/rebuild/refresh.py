"""Materialize exactly what is stale or missing, per asset and partition, in one process.

What needs a rebuild is judged by :mod:`mnist_assets.rebuild.staleness` (Dagster's stale status plus storage),
the same judgement the automation sensor uses. Sources are observed first, so a changed catalog entry
or remote file is seen. A dry run writes nothing to the instance: it observes the sources in this
process only, judges what is built from them against those versions, and lists the dead runs it
would mark failed. Assets are visited upstream first and each partition is judged right before
it would run, so a rebuild that reproduces identical content (same data version) leaves everything
downstream alone.
A failed partition is reported and keeps its last good artifact; what is built from it is blocked (not
run, listed with the failure behind it) and everything else still refreshes. Unlike the sensor, refresh
retries a partition whose last attempt failed at once (a person asked) and names that failure. Runs whose
process died are marked failed first, so they do not look in progress forever.

Every Dagster run costs a fixed ~0.3-0.6 s (run record, event log, plan), so a partition whose
children must be rebuilt anyway runs with them in one run when one run can build them: children of the
same partition, or unpartitioned ones, whose other inputs are settled already (a cold build: raw_gzip[x]
with idx[x], the last checkpoint with best_model); a child that might stay fresh still waits to be
judged after its input. Partitions of one asset never share a run: Dagster records one data version per
asset for all the partitions a run writes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mnist_assets.catalog_errors import catalog_errors
from mnist_assets.keys import partition_keys
from mnist_assets.rebuild import attempts, selection, staleness
from mnist_assets.rebuild.observing import Sources
from mnist_assets.rebuild.progress import Lines
from mnist_assets.rebuild.runs import Runs
from mnist_assets.rebuild.steps import Step, Summary
from mnist_assets.storage import leases
from mnist_assets.tags import TOLERATES_FAILED_INPUTS

Partition = tuple[dg.AssetKey, str | None]


@dataclass
class _Pass:
    """One walk of a refresh over the graph: what it has found so far, and how it was asked to run."""

    summary: Summary
    dry_run: bool
    verify: bool
    progress: Lines
    judge: Any
    """Dagster's stale-status resolver, renewed after each run (the event log moved on)."""
    changed: dict[Partition, str]
    """A dry run's observed source changes (see ``observing.Sources.unrecorded_changes``)."""
    planned: set[Partition] = field(default_factory=set)
    failed_roots: dict[Partition, set[str]] = field(default_factory=dict)
    """Each failed or blocked partition → the failures behind it."""
    done: set[Partition] = field(default_factory=set)
    """Ran as a companion of an input's run."""
    settled: set[Partition] = field(default_factory=set)
    """Judged, and run when stale: what a later run's companions may be built from (unless it failed)."""

    @property
    def log(self):
        return self.progress.log


class Refresher:
    """Judges and runs the assets of some datasets against one instance and one set of definitions."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        datasets: Sequence[str],
        console_log_level: str = "DEBUG",
        select: str | None = None,
    ):
        self.defs, self.instance = defs, instance
        # what runs print to stderr; every event still goes to the instance's event log
        self.run_config = {"loggers": {"console": {"config": {"log_level": console_log_level}}}}
        self.graph = defs.resolve_asset_graph()
        broken = catalog_errors(defs)
        known = {k.path[0] for k in self.graph.materializable_asset_keys} | set(broken)
        unknown = sorted(set(datasets) - known)
        if unknown:
            raise ValueError(
                f"unknown dataset(s) {', '.join(unknown)}; the catalog has {', '.join(sorted(known))}"
            )
        asked = list(datasets) or sorted(known)
        self.catalog_errors = {dataset: broken[dataset] for dataset in asked if dataset in broken}
        """Asked for, but their entries are wrong: reported, never run; the other datasets still refresh."""
        self.datasets = [dataset for dataset in asked if dataset not in broken]
        ours = [k for k in self.graph.toposorted_asset_keys if k.path[0] in self.datasets]
        self.keys = [k for k in ours if self.graph.get(k).is_materializable]
        self.sources = [k for k in ours if self.graph.get(k).is_observable]
        self.selected = None if select is None else selection.in_datasets(select, self.datasets, self.graph)
        """``--select``: the only partitions this refresh judges and runs (None: every one)."""
        self.observing = Sources(defs, self.sources)
        self.stores = staleness.stores_of(defs.assets or (), defs.resources or {})
        self.token = f"refresh-{uuid.uuid4().hex}"
        """This refresh's leases: held before a partition's run is launched, so no other process starts it."""
        self.runs = Runs(defs, instance, self.run_config, holder=self.token)

    def visits(self, key: dg.AssetKey, partition: str | None) -> bool:
        """Whether this refresh judges ``key[partition]``: an asset of its datasets, and selected."""
        return key in self.keys and (self.selected is None or (key, partition) in self.selected)

    def partitions(self, key: dg.AssetKey) -> list[str | None]:
        return partition_keys(self.graph.get(key).partitions_def)

    def run(
        self, dry_run: bool = False, verify: bool = False, log=print, progress: Lines | None = None
    ) -> Summary:
        """Judge every partition in graph order and run the stale ones.

        A refresh (not a dry run) holds its datasets' refresh leases throughout: a second refresh of a
        dataset waits for the first, then finds what it built fresh, instead of racing it partition by
        partition to whatever the first has not reached yet. Partition leases still make the sensor's
        and the UI's runs wait for this one, and this one for them.
        """
        with contextlib.ExitStack() as held:
            if not dry_run:
                for dataset in sorted(self.datasets):  # one order: overlapping refreshes cannot deadlock
                    held.enter_context(self.refresh_lease(dataset, progress.log if progress else log))
            return self._run(dry_run, verify, log, progress)

    def refresh_lease(self, dataset: str, log):
        """Hold ``dataset``'s refresh lease for the block, waiting while another refresh holds it."""
        key = next(k for k in self.keys if k.path[0] == dataset)
        return self.hold(leases.refresh_lease_of(self.lease_store(key), dataset), log)

    def lease_store(self, key: dg.AssetKey) -> leases.LeaseSettings:
        store = self.stores[key]
        assert isinstance(store, leases.LeaseSettings), f"{key.to_user_string()}: its store has no leases"
        return store

    def hold(self, lease: leases.Lease, log):
        """``lease`` held by this refresh for the block; who it waits for is said once."""

        def waiting(holder: leases.Holder) -> None:
            log(f"waiting for {lease.label}: {holder.describe()} is building it")

        return lease.held(self.token, None, waiting, log)

    def _run(self, dry_run: bool, verify: bool, log, progress: Lines | None) -> Summary:
        started = time.perf_counter()
        summary = Summary(datasets=self.datasets, dry_run=dry_run, catalog_errors=self.catalog_errors)
        if not self.datasets:
            return summary
        shown = progress or Lines(log)
        if self.selected is not None:
            shown.log(f"selected: {selection.described(self.selected)}")
        judge = self.look_around(dry_run, shown.log)
        changed = self.observing.unrecorded_changes(self.instance, judge, shown.log) if dry_run else {}
        visit = _Pass(summary, dry_run, verify, shown, judge, changed)
        for key in self.keys:
            for partition in self.partitions(key):
                if (key, partition) not in visit.done and self.visits(key, partition):
                    self.refresh_partition(visit, key, partition)
                    visit.settled.add((key, partition))
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.artifacts = self.artifacts()
        return summary

    def refresh_partition(self, visit: _Pass, key: dg.AssetKey, partition: str | None) -> None:
        """Judge ``key[partition]`` and, when stale and not blocked by a failed input, run it (a dry run
        only lists it)."""
        parents = self.parents(key, partition)
        step = self.judged(visit, key, partition, parents)
        if step is None or self.stopped_by_failed_input(visit, step, key, partition, parents):
            return
        claims = contextlib.ExitStack()
        if not visit.dry_run and not (causes := self.claim(claims, key, partition, visit.verify, visit.log)):
            claims.close()  # another process built it while this one waited: fresh now
            visit.summary.fresh += 1
            return
        if not visit.dry_run:
            step.causes = causes
        visit.log(f"{'would run' if visit.dry_run else 'running'} {step.label}: {'; '.join(step.causes)}")
        if visit.dry_run:
            visit.summary.ran.append(step)
            return
        with claims:
            steps = [step, *self.claimed_companions(visit, claims, key, partition)]
            visit.progress.started(steps)
            outcomes = self.runs.execute(partition, steps)
        for outcome in outcomes:
            if outcome.blocked_by and self.tolerates_failed_inputs(_partition_of(outcome)[0]):
                self.judge_later(visit, outcome)
            else:
                self.record(visit, outcome)
        visit.judge = staleness.resolver(self.instance, self.graph)  # the event log moved on

    def judged(
        self, visit: _Pass, key: dg.AssetKey, partition: str | None, parents: list[Partition]
    ) -> Step | None:
        """The step that rebuilds ``key[partition]``, with its causes and its last failure; None when it
        is fresh (counted as fresh, or, in a dry run, listed as waiting on a planned upstream rebuild)."""
        causes = staleness.causes(visit.judge, self.stores[key], key, partition, verify=visit.verify)
        causes = causes or [visit.changed[p] for p in parents if p in visit.changed]
        step = Step(key.to_user_string(), partition, causes)
        if not causes:
            if visit.dry_run and visit.planned.intersection(parents):
                step.causes = ["runs if its upstream's content changes"]
                visit.summary.waiting_on_upstream.append(step)
                visit.planned.add((key, partition))
            else:
                visit.summary.fresh += 1
            return None
        visit.planned.add((key, partition))
        if failure := attempts.last_failure(self.instance, key, partition):
            step.last_failure = failure.describe()
            visit.log(f"{step.label}: {step.last_failure}")
        return step

    def stopped_by_failed_input(
        self, visit: _Pass, step: Step, key: dg.AssetKey, partition: str | None, parents: list[Partition]
    ) -> bool:
        """Whether an input that failed in this refresh blocks ``step``; if so it is listed as blocked."""
        roots = set().union(*(visit.failed_roots.get(p, set()) for p in parents))
        if not roots or not self.blocked(key, parents, visit.failed_roots):
            return False
        step.blocked_by = sorted(roots)
        step.error = f"not run: its input {', '.join(step.blocked_by)} failed in this refresh"
        visit.summary.blocked.append(step)
        visit.failed_roots[(key, partition)] = roots
        visit.log(f"BLOCKED {step.label}: {step.error}")
        return True

    def claimed_companions(
        self, visit: _Pass, claims: contextlib.ExitStack, key: dg.AssetKey, partition: str | None
    ) -> list[Step]:
        """The companions of ``key[partition]`` (see :meth:`companions`) still stale under their own
        lease, held in ``claims``: they run in its run and are not visited again."""
        companions = [
            companion
            for companion in self.companions(visit, key, partition)
            if self.claim(claims, *_partition_of(companion), visit.verify, visit.log)
        ]
        for companion in companions:
            visit.log(f"running {companion.label} in the same run: {'; '.join(companion.causes)}")
            visit.done.add(_partition_of(companion))
        return companions

    def record(self, visit: _Pass, outcome: Step) -> None:
        """Show a finished step and file it as ran, blocked or failed; a failure blocks what is built
        from it. The last good artifact of a failed step stays; what does not depend on it still refreshes."""
        visit.progress.finished(outcome)
        if outcome.error is None:
            visit.summary.ran.append(outcome)
            return
        if outcome.blocked_by:
            visit.summary.blocked.append(outcome)
            visit.log(f"BLOCKED {outcome.label}: {outcome.error}")
        else:
            visit.summary.failed.append(outcome)
            visit.log(f"FAILED {outcome.label}: {outcome.error}")
        visit.failed_roots[_partition_of(outcome)] = set(outcome.blocked_by) or {outcome.label}

    def tolerates_failed_inputs(self, key: dg.AssetKey) -> bool:
        """Whether ``key`` chooses among its inputs (:data:`TOLERATES_FAILED_INPUTS`): one failing does
        not keep it from running."""
        return TOLERATES_FAILED_INPUTS in self.graph.get(key).tags

    def judge_later(self, visit: _Pass, companion: Step) -> None:
        """A companion that chooses among its inputs (:data:`TOLERATES_FAILED_INPUTS`) was skipped
        because one failed in its run: it is visited again in its turn, as if it had never joined the
        run, and runs with the inputs that are left."""
        visit.done.discard(_partition_of(companion))
        visit.progress.finished(companion)
        visit.log(f"{companion.label} is judged again in its turn: {companion.error}")

    def blocked(self, key: dg.AssetKey, parents: list[Partition], failed_roots: dict) -> bool:
        """Whether an input failing in this refresh keeps ``key`` from running: any failed input does,
        unless the asset chooses among its inputs (:data:`TOLERATES_FAILED_INPUTS`) and one is left."""
        if not self.tolerates_failed_inputs(key):
            return True
        return all(parent in failed_roots for parent in parents)

    def claim(
        self, claims: contextlib.ExitStack, key: dg.AssetKey, partition: str | None, verify: bool, log
    ) -> list[str]:
        """Hold the partition's lease until ``claims`` closes (waiting while another process builds it),
        then judge it again under the lease: what another process finished meanwhile is fresh now."""
        store = self.lease_store(key)
        claims.enter_context(self.hold(leases.lease_of(store, key, partition), log))
        judge = staleness.resolver(self.instance, self.graph)
        return staleness.causes(judge, self.stores[key], key, partition, verify=verify)

    def companions(self, visit: _Pass, key: dg.AssetKey, partition: str | None) -> list[Step]:
        """The descendants of ``key[partition]`` that can share its run, upstream first: of its partition
        (or unpartitioned: those run in a run of any partition), every input in the run or settled
        earlier in this refresh and not failed, and already due for a rebuild, so they must be rebuilt
        whatever this run produces (e.g. a cold build's idx[x] with raw_gzip[x], best_model with the
        last checkpoint). A child that might stay fresh waits to be judged after its input."""
        in_run: list[Partition] = [(key, partition)]
        found: list[Step] = []
        frontier = [key]
        while frontier:
            for child in sorted(self.graph.get(frontier.pop(0)).child_keys):
                candidate = self.built_in_run_of(child, key, partition)
                if candidate is None or child not in self.keys or candidate in in_run:
                    continue
                if not self.visits(*candidate):  # outside a --select
                    continue
                if not all(p in in_run or self.settled(visit, p) for p in self.parents(*candidate)):
                    continue
                causes = staleness.causes(
                    visit.judge, self.stores[child], *candidate, verify=visit.verify, rebuilt_first=in_run
                )
                if causes:
                    found.append(Step(child.to_user_string(), candidate[1], causes))
                    in_run.append(candidate)
                    frontier.append(child)
        return found

    def built_in_run_of(
        self, child: dg.AssetKey, key: dg.AssetKey, partition: str | None
    ) -> Partition | None:
        """The partition of ``child`` that a run of ``key[partition]`` can build: the same one when they
        share partitions, ``child`` itself when it has none; None when no run of that partition can."""
        partitions_def = self.graph.get(child).partitions_def
        if partitions_def is None:
            return child, None
        return (child, partition) if partitions_def == self.graph.get(key).partitions_def else None

    def settled(self, visit: _Pass, upstream: Partition) -> bool:
        """Whether ``upstream`` will not change again in this refresh: a source (observed before
        judging), or judged (and run when stale) already, and not failed."""
        if upstream[0] not in self.keys:
            return True
        judged = upstream in visit.settled or upstream in visit.done
        return judged and upstream not in visit.failed_roots

    def look_around(self, dry_run: bool, log):
        """Before judging: mark the runs whose process died failed and record the sources' current data
        versions, so the plan reflects the catalog and the mirrors as they are now; the judge of it all.
        A dry run writes nothing: it only says which runs it would mark (for the sources see
        :meth:`.observing.Sources.unrecorded_changes`)."""
        if dry_run:
            for run, pid in attempts.dead_runs(self.instance):
                log(f"would mark run {run.run_id} failed: its process (pid {pid}) disappeared")
        else:
            for run_id in attempts.fail_dead_runs(self.instance):
                log(f"marked run {run_id} failed: its process disappeared")
            self.observe(log)
        return staleness.resolver(self.instance, self.graph)

    def observe(self, log=print) -> None:
        """Record the sources' current data versions (:meth:`Sources.record`)."""
        self.observing.record(self.instance, log)

    def parents(self, key: dg.AssetKey, partition: str | None) -> list[Partition]:
        """The upstream partitions this partition is built from."""
        return [
            (parent, parent_partition)
            for parent in self.graph.get(key).parent_keys
            for parent_partition in self.partitions(parent)
            if any(
                child.asset_key == key and child.partition_key == partition
                for child in self.graph.get_children_partitions(parent, parent_partition)
            )
        ]

    def artifacts(self) -> dict[str, dict[str, str]]:
        """Where every asset partition of the datasets lives (whether or not it exists yet)."""
        return {
            key.to_user_string(): {
                partition or "-": str(self.stores[key].location(key, partition))
                for partition in self.partitions(key)
            }
            for key in self.keys
        }


def _partition_of(step: Step) -> Partition:
    return dg.AssetKey.from_user_string(step.asset), step.partition


def refresh(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    datasets: Iterable[str] = (),
    dry_run: bool = False,
    verify: bool = False,
    log=print,
    console_log_level: str = "DEBUG",
    progress: Lines | None = None,
    select: str | None = None,
) -> Summary:
    """Refresh ``datasets`` (all when empty), or only what ``select`` selects in them
    (:mod:`mnist_assets.rebuild.selection`); ``log`` takes plain lines, or ``progress`` shows the steps."""
    refresher = Refresher(defs, instance, list(datasets), console_log_level, select)
    return refresher.run(dry_run=dry_run, verify=verify, log=log, progress=progress)
