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
same-partition children must be rebuilt anyway (e.g. a cold build: raw_gzip[x] and idx[x] both missing)
runs with them in one run; a child that might stay fresh still waits to be judged after its input.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mnist_assets import quiet
from mnist_assets.catalog_errors import catalog_errors
from mnist_assets.dagster_private import observe_sources, observed_data_versions, reconstructable_asset_job
from mnist_assets.keys import label, partition_keys
from mnist_assets.rebuild import attempts, staleness
from mnist_assets.rebuild.progress import Lines
from mnist_assets.rebuild.steps import Step, Summary, failure_message
from mnist_assets.storage import leases
from mnist_assets.tags import HOLDER_TAG, PARTITION, TOLERATES_FAILED_INPUTS

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
    """A dry run's observed source changes (see ``Refresher.unrecorded_changes``)."""
    planned: set[Partition] = field(default_factory=set)
    failed_roots: dict[Partition, set[str]] = field(default_factory=dict)
    """Each failed or blocked partition → the failures behind it."""
    done: set[Partition] = field(default_factory=set)
    """Ran as a companion of an input's run."""

    @property
    def log(self):
        return self.progress.log


DEFINITIONS_MODULE = "mnist_assets.definitions"


def _check_rebuildable(defs: dg.Definitions, executor: str) -> None:
    """Runs on another executor rebuild the job by importing :data:`DEFINITIONS_MODULE` (in this process
    and in every worker), so only those very definitions can be refreshed that way. They are looked up,
    not imported: the definitions are built on top of this module, and definitions that were never
    loaded cannot be the ones passed in."""
    loaded = sys.modules.get(DEFINITIONS_MODULE)
    if getattr(loaded, "defs", None) is not defs:
        raise ValueError(
            f"the {executor} executor runs the job rebuilt from {DEFINITIONS_MODULE} in every worker; "
            "refresh those definitions (catalog and storage through MNIST_ASSETS_CATALOG and "
            "MNIST_ASSETS_STORAGE)"
        )


class Refresher:
    """Judges and runs the assets of some datasets against one instance and one set of definitions."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        datasets: Sequence[str],
        console_log_level: str = "DEBUG",
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
        self.stores = staleness.stores_of(defs.assets or (), defs.resources or {})
        # its runs' console: the steps' messages; refresh reports each failure itself (quiet.console_logger)
        with_console = dg.Definitions.merge(defs, dg.Definitions(loggers={"console": quiet.console_logger}))
        self.job = with_console.resolve_implicit_global_asset_job_def()
        self.token = f"refresh-{uuid.uuid4().hex}"
        """This refresh's leases: held before a partition's run is launched, so no other process starts it."""
        if self.job.executor_def is not dg.in_process_executor:
            _check_rebuildable(defs, self.job.executor_def.name)

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
        judge = self.look_around(dry_run, shown.log)
        changed = self.unrecorded_changes(judge) if dry_run else {}
        visit = _Pass(summary, dry_run, verify, shown, judge, changed)
        for key in self.keys:
            for partition in self.partitions(key):
                if (key, partition) not in visit.done:
                    self.refresh_partition(visit, key, partition)
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
            outcomes = self.execute(partition, steps)
        for outcome in outcomes:
            self.record(visit, outcome, partition)
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
            for companion in self.companions(visit.judge, key, partition, visit.verify)
            if self.claim(
                claims, dg.AssetKey.from_user_string(companion.asset), partition, visit.verify, visit.log
            )
        ]
        for companion in companions:
            visit.log(f"running {companion.label} in the same run: {'; '.join(companion.causes)}")
            visit.done.add((dg.AssetKey.from_user_string(companion.asset), partition))
        return companions

    def record(self, visit: _Pass, outcome: Step, partition: str | None) -> None:
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
        outcome_key = (dg.AssetKey.from_user_string(outcome.asset), partition)
        visit.failed_roots[outcome_key] = set(outcome.blocked_by) or {outcome.label}

    def blocked(self, key: dg.AssetKey, parents: list[Partition], failed_roots: dict) -> bool:
        """Whether an input failing in this refresh keeps ``key`` from running: any failed input does,
        unless the asset chooses among its inputs (:data:`TOLERATES_FAILED_INPUTS`) and one is left."""
        if TOLERATES_FAILED_INPUTS not in self.graph.get(key).tags:
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

    def companions(self, judge, key: dg.AssetKey, partition: str | None, verify: bool) -> list[Step]:
        """The same-partition descendants built only from ``key[partition]`` (directly or through each
        other) that need a rebuild whatever it produces: they can share its run."""
        found: list[Step] = []
        frontier = [key]
        while frontier:
            parent = frontier.pop(0)
            for child in sorted(self.graph.get(parent).child_keys):
                if child not in self.keys or self.parents(child, partition) != [(parent, partition)]:
                    continue
                causes = staleness.causes(judge, self.stores[child], child, partition, verify=verify)
                if causes:
                    found.append(Step(child.to_user_string(), partition, causes))
                    frontier.append(child)
        return found

    def execute(self, partition: str | None, steps: list[Step]) -> list[Step]:
        """Materialize ``steps`` (one partition, upstream first) in one run; fills in each step's seconds,
        and its error when it failed or did not run."""
        keys = [dg.AssetKey.from_user_string(step.asset) for step in steps]
        with self.launch(keys, partition) as result:
            return self.outcomes(result, keys, steps)

    def launch(self, keys: list[dg.AssetKey], partition: str | None):
        """One run of ``keys[partition]`` on the definitions' executor, its result as a context manager.

        In process unless the definitions chose another executor (``MNIST_ASSETS_EXECUTOR``): then this
        process orchestrates a real run whose steps run elsewhere (e.g. Celery workers).
        """
        holder = {HOLDER_TAG: self.token}  # its steps' leases are held (and renewed) here
        if self.job.executor_def is dg.in_process_executor:
            return contextlib.nullcontext(
                self.job.execute_in_process(
                    run_config=self.run_config,
                    asset_selection=keys,
                    partition_key=partition,
                    instance=self.instance,
                    raise_on_error=False,
                    tags=holder,
                )
            )
        return dg.execute_job(
            reconstructable_asset_job(DEFINITIONS_MODULE),
            self.instance,
            run_config=self.run_config,
            tags={**holder, PARTITION: partition} if partition else holder,
            asset_selection=keys,
            raise_on_error=False,
        )

    def outcomes(self, result, keys: list[dg.AssetKey], steps: list[Step]) -> list[Step]:
        """Each step's seconds and, when it failed or did not run, its error, from a finished run."""
        stats = {s.step_key: s for s in self.instance.get_run_step_stats(result.run_id)}
        succeeded = {event.step_key for event in result.get_step_success_events()}
        failed: list[str] = []
        for key, step in zip(keys, steps, strict=True):
            step_key = self.defs.resolve_assets_def(key).node_def.name
            stat = stats.get(step_key)
            if stat and stat.start_time is not None and stat.end_time is not None:
                step.seconds = round(stat.end_time - stat.start_time, 3)
            if step_key in succeeded:
                continue
            if stat is None and failed:  # never started: an input in this run failed
                step.blocked_by = list(failed)
                step.error = f"not run: its input {', '.join(failed)} failed in this refresh"
                continue
            step.error = failure_message(result, step_key)
            failed.append(step.label)
        return steps

    def look_around(self, dry_run: bool, log):
        """Before judging: mark the runs whose process died failed and record the sources' current data
        versions, so the plan reflects the catalog and the mirrors as they are now; the judge of it all.
        A dry run writes nothing: it only says which runs it would mark (see :meth:`unrecorded_changes`
        for the sources)."""
        if dry_run:
            for run, pid in attempts.dead_runs(self.instance):
                log(f"would mark run {run.run_id} failed: its process (pid {pid}) disappeared")
        else:
            for run_id in attempts.fail_dead_runs(self.instance):
                log(f"marked run {run_id} failed: its process disappeared")
            self.observe()
        return staleness.resolver(self.instance, self.graph)

    def observe(self) -> None:
        """Record the sources' current data versions (catalog entries, remote files)."""
        for sources in self.source_groups():
            observe_sources(sources, self.instance, self.run_config)

    def source_groups(self) -> list[list[dg.AssetsDefinition]]:
        """The sources (catalog entries, remote files), one group per partitions definition: Dagster
        observes only alike sources together."""
        groups: dict[object, list[dg.AssetsDefinition]] = {}
        for key in self.sources:
            groups.setdefault(self.graph.get(key).partitions_def, []).append(
                self.defs.resolve_assets_def(key)
            )
        return list(groups.values())

    def unrecorded_changes(self, judge) -> dict[Partition, str]:
        """A dry run's observation: the source partitions whose data version now differs from the one
        recorded, each with the cause it gives the partitions built from it, observed in this process and
        recorded nowhere. Their children are judged as a refresh would after recording it (a partition
        already due for another reason keeps that reason)."""
        changed: dict[Partition, str] = {}
        for sources in self.source_groups():
            for (key, partition), version in observed_data_versions(sources, self.run_config).items():
                if version != judge.get_current_data_version(key, partition).value:
                    changed[(key, partition)] = (
                        f"has a new dependency data version ({label(key, partition)}), "
                        "observed by this dry run, not recorded"
                    )
        return changed

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


def refresh(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    datasets: Iterable[str] = (),
    dry_run: bool = False,
    verify: bool = False,
    log=print,
    console_log_level: str = "DEBUG",
    progress: Lines | None = None,
) -> Summary:
    """Refresh ``datasets`` (all when empty); ``log`` takes plain lines, or ``progress`` shows the steps."""
    refresher = Refresher(defs, instance, list(datasets), console_log_level)
    return refresher.run(dry_run=dry_run, verify=verify, log=log, progress=progress)
