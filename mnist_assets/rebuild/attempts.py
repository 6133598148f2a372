"""Past attempts at building a partition: its last failure, when to try again, and runs whose process died.

A failed partition keeps failing until something changes (a mirror comes back, a file or setting is
fixed), so the sensor requests it again only when something it is built from changed since that
attempt, or after a backoff that doubles per consecutive failure (from ``MNIST_ASSETS_RETRY_BACKOFF``
seconds, up to a day): one failed run per change or backoff step, never one per tick. A person running
`mnist-assets refresh` asked for it, so refresh always tries and says how the last attempt ended.

Attempts are read from the instance: every run plans its partitions (``ASSET_MATERIALIZATION_PLANNED``);
when the latest planned run of a partition failed and did not materialize it, that was a failed attempt
(Dagster's OSS storage keeps no ``ASSET_FAILED_TO_MATERIALIZE`` events), and the failed runs of that
partition since its last materialization are the failures in a row. A run whose process was killed stays
STARTED forever; :func:`fail_dead_runs` marks it failed, which makes it such an attempt.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from mnist_assets.keys import label
from mnist_assets.settings import DEFAULT_BACKOFF_SECONDS
from mnist_assets.tags import ANSWERED, PARTITION, PROCESS_GONE_TAG

MAX_BACKOFF_SECONDS = 86_400.0
FAILED_RUNS_COUNTED = 30
"""Enough for the backoff to reach its one-day cap (300 s doubled 9 times)."""


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Failure:
    """The latest failed attempt at a partition, with how many attempts in a row failed."""

    run_id: str
    at: float
    planned_storage_id: int
    in_a_row: int
    message: str
    process_gone: bool

    def retry_at(self, backoff: float) -> float:
        """When the sensor may try again though nothing changed. A first run whose process vanished is
        retried at once: the machine failed, not the data; any other failure backs off, doubling."""
        if self.process_gone and self.in_a_row == 1:
            return self.at
        return self.at + min(backoff * 2 ** (self.in_a_row - 1), MAX_BACKOFF_SECONDS)

    def describe(self) -> str:
        times = f", {self.in_a_row} failed attempts in a row" if self.in_a_row > 1 else ""
        return f"last attempt failed at {_when(self.at)} (run {self.run_id[:8]}{times}): {self.message}"


def _run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """What the failed step raised (not Dagster's wrapper), else the run failure, on one line."""
    kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    events = [e.dagster_event for e in instance.all_logs(run_id, of_type=kinds) if e.dagster_event]
    events.sort(key=lambda e: e.event_type != dg.DagsterEventType.STEP_FAILURE)
    for event in events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.cause is not None and error.cls_name.endswith("ExecutionError"):
            error = error.cause
        text = (error.message if error else None) or event.message or ""
        if error is not None and text.split(": ", 1)[0].endswith(error.cls_name):  # "pkg.mod.Error: ..."
            text = text.split(": ", 1)[1]
        text = " ".join(text.split("\nStack Trace:")[0].split())
        if text:
            return text if len(text) <= 400 else text[:399] + "…"
    return "the run failed (see its event log)"


def last_failure(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> Failure | None:
    """The partition's latest attempt when it failed and nothing has materialized it since, else None."""
    planned = instance.get_latest_planned_materialization_info(key, partition)
    record = instance.get_run_record_by_id(planned.run_id) if planned else None
    if planned is None or record is None or record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
        return None
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if latest and latest[0].storage_id > planned.storage_id:  # the failed run built it before failing
        return None
    since = datetime.fromtimestamp(latest[0].timestamp, UTC) if latest else None
    failed_runs = instance.get_run_records(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            tags={PARTITION: partition} if partition else {},
            created_after=since,
        ),
        limit=FAILED_RUNS_COUNTED,
    )
    in_a_row = sum(
        not r.dagster_run.asset_selection or key in r.dagster_run.asset_selection for r in failed_runs
    )
    return Failure(
        run_id=planned.run_id,
        at=record.end_time or record.update_timestamp.timestamp(),
        planned_storage_id=planned.storage_id,
        in_a_row=max(in_a_row, 1),
        message=_run_failure_message(instance, planned.run_id),
        process_gone=PROCESS_GONE_TAG in record.dagster_run.tags,
    )


def failure_suspects(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Iterable[str]) -> set[str]:
    """The partitions among ``partitions`` whose latest plan no materialization followed: the only ones
    :func:`last_failure` can find a failure for. Two queries for the whole asset, where asking
    :func:`last_failure` of each partition costs one to five (nothing failed, mostly)."""
    asked = set(partitions)
    if not asked:  # the query would read every partition
        return set()
    planned = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asked
    )
    if not planned:
        return set()
    built = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(planned)
    )
    return {partition for partition, plan in planned.items() if built.get(partition, -1) < plan}


def change_since(
    instance: dg.DagsterInstance, graph, key: dg.AssetKey, partition: str | None, failure: Failure
):
    """What this partition is built from that changed after the failed attempt, or None.

    A source changed when it was observed with a data version other than the one it had when the
    attempt started (a new remote file, a new pin), or when a mirror answers again that did not answer
    then (an unanswered observation keeps the previous version); an asset changed when another
    run materialized it. Code and catalog changes are code versions, which Dagster's own
    ``code_version_changed`` sees.
    """
    for parent in sorted(graph.get_parents_partitions(key, partition).parent_partitions, key=str):
        records_filter = dg.AssetRecordsFilter(
            asset_key=parent.asset_key,
            asset_partitions=[parent.partition_key] if parent.partition_key else None,
            after_storage_id=failure.planned_storage_id,
        )
        if graph.get(parent.asset_key).is_observable:
            after = instance.fetch_observations(records_filter, limit=1).records
            if not after:
                continue
            before = instance.fetch_observations(
                dg.AssetRecordsFilter(
                    asset_key=parent.asset_key,
                    asset_partitions=records_filter.asset_partitions,
                    before_storage_id=failure.planned_storage_id,
                ),
                limit=1,
            ).records
            now = after[0].asset_observation
            then = before[0].asset_observation if before else None
            if now is not None and (then is None or now.data_version != then.data_version):
                return f"{label(parent.asset_key, parent.partition_key)} answered with a new data version"
            if now is not None and _answered(now) and not _answered(then):
                return f"{label(parent.asset_key, parent.partition_key)} answered again"
        elif any(
            r.run_id != failure.run_id
            for r in instance.fetch_materializations(records_filter, limit=5).records
        ):
            return f"{label(parent.asset_key, parent.partition_key)} was rebuilt"
    return None


def _answered(observation: dg.AssetObservation | None) -> bool:
    """Whether a mirror answered this observation (one that did not keeps the previous data version)."""
    if observation is None:
        return False
    answered = observation.metadata.get(ANSWERED)
    return answered is None or bool(answered.value)


class BackingOff(dg.AutomationCondition):
    """True for the partitions whose last attempt failed, that nothing changed since, and whose backoff
    has not run out; the per-partition "waiting: …" text goes to the UI's evaluation metadata."""

    def __init__(self, backoff_seconds: float = DEFAULT_BACKOFF_SECONDS):
        self.backoff_seconds = backoff_seconds

    @property
    def name(self) -> str:
        return "backing_off"

    @property
    def description(self) -> str:
        return (
            "waiting: the last attempt failed; retried on a change of what it is built from, or after "
            f"a backoff doubling from {self.backoff_seconds:g} s up to a day"
        )

    def waiting(self, instance, graph, key: dg.AssetKey, partition: str | None, now: float) -> str | None:
        failure = last_failure(instance, key, partition)
        if failure is None or change_since(instance, graph, key, partition, failure):
            return None
        retry_at = failure.retry_at(self.backoff_seconds)
        if retry_at <= now:
            return None
        return f"waiting: {failure.describe()}; retry after {_when(retry_at)} or on change"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance, graph = context.asset_graph_view.instance, context.asset_graph
        now = context.evaluation_time.timestamp()
        subset = context.candidate_subset
        if subset.is_partitioned:
            keys = subset.expensively_compute_partition_keys()
            partitions: list[str | None] = [*sorted(failure_suspects(instance, context.key, keys) & keys)]
        else:
            partitions = [None]
        found = {
            p or "-": text for p in partitions if (text := self.waiting(instance, graph, context.key, p, now))
        }
        if not subset.is_partitioned:
            true_subset = subset if found else context.get_empty_subset()
        else:
            assert context.partitions_def is not None, "a partitioned subset belongs to a partitioned asset"
            true_subset = context.asset_graph_view.get_subset_from_partition_keys(
                key=context.key, partitions_def=context.partitions_def, partition_keys=set(found)
            )
        return dg.AutomationResult(
            context=context,
            true_subset=true_subset,
            metadata={"waiting": dg.MetadataValue.json(found)} if found else {},
        )


def _pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process executing the run's steps, as its executor recorded it ("Executing steps in process")."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data else None
        if pid is not None and str(pid.value).isdigit():
            return int(str(pid.value))
    return None


def _alive(pid: int) -> bool:
    """Whether the process exists on this machine and is not a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # Linux: the state follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _one_machine(instance: dg.DagsterInstance) -> bool:
    """Whether the instance lives in this machine's files or memory (SQLite, in-memory: Dagster's own
    storages), so every run's pid is one of this machine's; a shared database (PostgreSQL) is not."""
    if instance.is_ephemeral:
        return True
    ref = instance.get_ref()
    storages = [ref.storage_data, ref.run_storage_data]
    return all(s is None or s.module_name.startswith("dagster._core.") for s in storages)


def dead_runs(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, int]]:
    """Every STARTED run whose recorded process no longer exists on this machine, with that pid.

    Dagster's run monitoring covers only runs started by a run launcher with the daemon running; runs
    executed in a process of their own (``mnist-assets refresh``, ``execute_in_process``) would stay
    STARTED. A pid means something only on the machine that recorded it, so runs of an instance shared
    between machines (the PostgreSQL deployment, where ``run_monitoring`` is on) are left alone.
    """
    if not _one_machine(instance):
        return []
    found = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = _pid(instance, record.dagster_run.run_id)
        if pid is not None and not _alive(pid):
            found.append((record.dagster_run, pid))
    return found


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every one of :func:`dead_runs` failed, so its partitions are retried; their ids."""
    marked = []
    for run, pid in dead_runs(instance):
        instance.add_run_tags(run.run_id, {PROCESS_GONE_TAG: str(pid)})
        instance.report_run_failed(
            run,
            message=f"the process running this run (pid {pid}) disappeared, killed or crashed, while the "
            "run was STARTED; marked failed by mnist-assets so its partitions are retried (their last "
            "good artifacts are kept)",
        )
        marked.append(run.run_id)
    return marked
