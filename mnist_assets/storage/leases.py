"""Shared work: one process at a time builds an asset partition; the others wait for it and reuse it.

Why: two ``mnist-assets refresh`` of one dataset, a refresh and the sensor's runs, or a refresh and a
run someone launched from the UI, all judge the same partition stale and would each rebuild it
(training included) although the results are identical. As in Flyte's ``cache_serialize``, identical
work runs once: the first to start holds the partition's **lease**; the others wait, then find the
partition fresh and reuse what the holder committed instead of computing it again.

Where: beside the artifacts, at ``<root>/_leases/<dataset>/<asset>/<partition>``, so every process
that shares the storage (refreshes, the code server, Celery workers on other hosts) sees the same
lease with no service of its own. A lease is a small JSON record (who holds it: a token, the run, pid
and host; when it was last renewed; for how long) replaced only by compare-and-swap, which the storage
makes atomic: on local disk under an ``flock`` of a file beside it; on object storage by conditional
put (``If-None-Match: *`` creates it, ``If-Match: <etag>`` renews, releases or takes it over), the
protocol :mod:`mnist_assets.storage.object` commits by.

Expiry: a crashed holder must not block anyone for ever, so a lease lasts ``seconds``
(``MNIST_ASSETS_LEASE_SECONDS``) from its last renewal; a holder renews it every third of that while
it works (a heartbeat thread), and a lease nobody renewed in time is taken over by the next comer.
Expiry compares the holder's wall clock with the reader's: hosts sharing storage must agree (NTP) to
well within a lease. Losing a lease (a holder stalled past it) costs repeated work, never data: commits
stay safe against concurrent writers on their own.

A step (:func:`shared_step`) takes its partition's lease before it computes; if it had to wait and the
partition is now fresh (the code version and input data versions it would record are the ones stored,
and the artifact is there: rebuilding's judgement, which the step is given as a :data:`Fresh` callable
since storage sits below :mod:`mnist_assets.rebuild`), it reuses that result instead: its
materialization repeats the stored one (same data version, same files, same kept version, the same check
results) and names the run whose result it reused. ``mnist-assets refresh`` takes the lease itself
before it launches a partition's run, and judges the partition again under it; the run's steps see from
the run's :data:`HOLDER_TAG` that the lease is their launcher's and compute. A refresh also holds its
dataset's refresh lease (:func:`refresh_lease_of`) from start to end, so a second refresh waits for the
whole first one instead of racing it to the partitions it has not reached yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

import dagster as dg
from upath import UPath

from mnist_assets.keys import label
from mnist_assets.storage.backends import Stored
from mnist_assets.storage.faults import is_precondition_failure
from mnist_assets.storage.files import is_local, write_atomic
from mnist_assets.tags import DATA_VERSION, HOLDER_TAG, REUSED_FROM

LEASES = "_leases"
REFRESH = "_refresh"
"""The file name of a dataset's refresh lease, beside its assets' directories (no asset name starts
with ``_``)."""
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Holder:
    token: str
    run_id: str | None
    pid: int
    host: str
    renewed: float
    """Wall-clock time of the last renewal (seconds since the epoch)."""
    seconds: float
    released: bool = False

    def live(self, now: float) -> bool:
        return not self.released and now <= self.renewed + self.seconds

    def describe(self) -> str:
        """``run 1a2b3c4d in pid N on host H`` (or ``mnist-assets refresh in pid …`` before its run)."""
        who = f"run {self.run_id[:8]}" if self.run_id else "mnist-assets refresh"
        return f"{who} in pid {self.pid} on host {self.host}"


class _Cell(Protocol):
    """One small record that changes only by compare-and-swap."""

    def read(self) -> tuple[bytes | None, str | None]:
        """The record and its tag (None, None when there is none)."""

    def swap(self, data: bytes, expected: str | None) -> str | None:
        """Write ``data`` if the record's tag is still ``expected`` (None: if there is no record); the
        new tag, or None when another writer changed it first."""


class _LocalCell:
    """On local disk: the tag is the content's hash; swaps hold an ``flock`` of a file beside it."""

    def __init__(self, path: UPath):
        self.path = path

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def swap(self, data: bytes, expected: str | None) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path.with_name(f".{self.path.name}.lock")), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.read()[1] != expected:
                return None
            write_atomic(self.path, data)
        finally:
            os.close(fd)
        return hashlib.sha256(data).hexdigest()


class _ObjectCell:
    """On object storage: the tag is the ETag; swaps are conditional puts."""

    def __init__(self, path: UPath):
        self.path, self.fs = path, path.fs

    def read(self) -> tuple[bytes | None, str | None]:
        try:  # ETag first: if the object changes before it is read, the next swap fails (the safe side)
            etag = self.fs.info(self.path.path, refresh=True)["ETag"]
            return self.fs.cat_file(self.path.path), etag
        except FileNotFoundError:
            return None, None

    def swap(self, data: bytes, expected: str | None) -> str | None:
        condition: dict[str, str] = {"IfMatch": expected} if expected else {"mode": "create"}
        try:
            answer = self.fs.pipe_file(self.path.path, data, **condition)
        except (OSError, FileNotFoundError) as error:
            if is_precondition_failure(error) or isinstance(error, FileNotFoundError):
                return None  # taken meanwhile (or, for If-Match, deleted meanwhile)
            raise
        finally:
            self.fs.invalidate_cache(self.path.parent.path)
        return answer["ETag"]


class Lease:
    """One partition's lease, as this process sees it (see the module docstring)."""

    def __init__(self, path: UPath, seconds: float, label: str):
        self.cell: _Cell = _LocalCell(path) if is_local(path) else _ObjectCell(path)
        self.path, self.seconds, self.label = path, seconds, label
        self.mine: Holder | None = None
        self._tag: str | None = None

    def holder(self) -> tuple[Holder | None, str | None]:
        """The recorded holder (live or not) and the record's tag; a damaged record counts as free."""
        data, tag = self.cell.read()
        try:
            return (Holder(**json.loads(data)) if data is not None else None), tag
        except (ValueError, TypeError):
            return None, tag

    def try_take(self, token: str, run_id: str | None) -> Holder | None:
        """Take the lease unless another live holder has it: None when taken, else that holder."""
        current, tag = self.holder()
        if current is not None and current.token != token and current.live(time.time()):
            return current
        mine = Holder(token, run_id, os.getpid(), socket.gethostname(), time.time(), self.seconds)
        written = self.cell.swap(_encode(mine), tag)
        if written is None:  # another process swapped first: it is the holder now
            return self.holder()[0] or current or mine
        self.mine, self._tag = mine, written
        return None

    def renew(self) -> bool:
        """Extend the lease by another term; False when it was lost (expired and taken over)."""
        if self.mine is None:
            return False
        renewed = replace(self.mine, renewed=time.time())
        written = self.cell.swap(_encode(renewed), self._tag)
        if written is None:
            self.mine = None
            return False
        self.mine, self._tag = renewed, written
        return True

    def release(self) -> None:
        """Give the lease up (if still held): the next comer takes it at once."""
        if self.mine is not None:
            self.cell.swap(_encode(replace(self.mine, renewed=time.time(), released=True)), self._tag)
            self.mine = None

    def take(self, token: str, run_id: str | None, on_wait: Callable[[Holder], None]) -> Holder | None:
        """Take the lease, waiting while another live holder has it (``on_wait`` is told once); the
        holder waited for, or None when the lease was free."""
        waited_for: Holder | None = None
        while (holder := self.try_take(token, run_id)) is not None:
            if waited_for is None:
                on_wait(holder)
            waited_for = holder
            time.sleep(min(1.0, self.seconds / 10))
        return waited_for

    @contextlib.contextmanager
    def held(
        self, token: str, run_id: str | None, on_wait: Callable[[Holder], None], warn: Callable[[str], None]
    ) -> Iterator[Holder | None]:
        """The lease held (renewed every third of its term) for the block; yields the holder waited for.

        Storage that cannot hold the lease (read-only, full) does not stop the work: it goes on without
        one, since sharing work saves time and commits are safe on their own; its own writes then fail
        with the storage's plain sentence."""
        try:
            waited_for = self.take(token, run_id, on_wait)
        except OSError as error:
            warn(
                f"{self.label}: cannot take its lease {self.path} ({error.strerror or error}); builds without"
            )
            yield None
            return
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.seconds / 3):
                try:
                    renewed = self.renew()
                except OSError:
                    renewed = False
                if not renewed:
                    warn(
                        f"{self.label}: lost its lease {self.path} (not renewed within {self.seconds} s); "
                        "another process may build it too, which costs time, not data"
                    )
                    return

        beating = threading.Thread(target=heartbeat, name=f"lease {self.label}", daemon=True)
        beating.start()
        try:
            yield waited_for
        finally:
            stop.set()
            beating.join()
            with contextlib.suppress(OSError):  # an unreleased lease expires by itself
                self.release()


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), sort_keys=True).encode()


@runtime_checkable
class LeaseSettings(Protocol):
    """Where leases live and how long they last: what an artifact IO manager is configured with."""

    root: str
    lease_seconds: float


def lease_of(store: LeaseSettings, key: dg.AssetKey, partition: str | None) -> Lease:
    """The lease of ``key[partition]`` in ``store``'s storage."""
    parts = [*key.path, partition or "all"]
    unsafe = [p for p in parts if not _PLAIN.match(p) or ".." in p]
    if unsafe:
        raise ValueError(f"refusing unsafe lease name {unsafe[0]!r} for {key.to_user_string()}")
    return Lease(UPath(store.root).joinpath(LEASES, *parts), store.lease_seconds, label(key, partition))


def refresh_lease_of(store: LeaseSettings, dataset: str) -> Lease:
    """The lease a refresh of ``dataset`` holds from start to end (see ``refresh.Refresher.run``)."""
    if not _PLAIN.match(dataset):
        raise ValueError(f"refusing unsafe lease name {dataset!r}")
    return Lease(UPath(store.root).joinpath(LEASES, dataset, REFRESH), store.lease_seconds, dataset)


# --- in a step ----------------------------------------------------------------------------------


Fresh = Callable[[dg.AssetExecutionContext, Any, str | None], bool]
"""Whether a step's partition (context, its store, partition key) is fresh now, so the result another
process built while the step waited can be reused: :func:`mnist_assets.rebuild.judgement.fresh`, handed
down by whoever builds the assets."""


def shared_step(fn: Callable[..., Any], io_manager_key: str, fresh: Fresh) -> Callable[..., Any]:
    """An asset body run under its partition's lease (its store, ``io_manager_key``, says where).

    Whatever launched the run (a refresh, the sensor, the UI), a step that finds another process
    building its partition waits, and then reuses that result when the partition is fresh, unless its
    run gives the step a config of its own (a one-off that staleness does not track). The body runs
    as Dagster calls it; this generator passes on what it yields or returns.
    """

    @functools.wraps(fn)
    def step(context: dg.AssetExecutionContext, *args, **kwargs):
        store = getattr(context.resources, io_manager_key)
        partition = _partition(context)
        lease = lease_of(store, context.asset_key, partition)
        launcher = context.run.tags.get(HOLDER_TAG)
        holder = lease.holder()[0]
        if launcher and holder is not None and holder.token == launcher and holder.live(time.time()):
            yield from _results(fn(context, *args, **kwargs))  # its launcher holds and renews the lease
            return

        def waiting(other: Holder) -> None:
            context.log.info(f"waiting for {lease.label}: {other.describe()} is building it")

        run_id = context.run.run_id
        with lease.held(run_id, run_id, waiting, context.log.warning) as waited_for:
            waited = waited_for is not None and not _configured(context)
            reused = _reuse(context, partition) if waited and fresh(context, store, partition) else None
            if reused is not None:
                yield from reused
                return
            yield from _results(fn(context, *args, **kwargs))

    # a reused step yields a Stored receipt, whatever type the body's own value has
    step.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty
    )
    return step


def _partition(context: dg.AssetExecutionContext) -> str | None:
    """The step's own partition: an unpartitioned asset in a partitioned run (e.g. best_model with the
    last checkpoint) sees the run's partition key, which is not its own."""
    if context.assets_def.partitions_def is None or not context.has_partition_key:
        return None
    return context.partition_key


def _results(result: Any) -> Iterator[Any]:
    if inspect.isgenerator(result):
        yield from result
    else:
        yield result


def _configured(context: dg.AssetExecutionContext) -> bool:
    """Whether the run gives this step a config of its own (e.g. ``epochs`` for one run)."""
    ops = context.run.run_config.get("ops")
    return isinstance(ops, dict) and bool(ops.get(context.op_def.name, {}).get("config"))


def _reuse(context: dg.AssetExecutionContext, partition: str | None) -> list[Any] | None:
    """What the step yields to reuse the fresh partition's stored result, or None when none is recorded."""
    key = context.asset_key
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records or (materialization := records[0].asset_materialization) is None:
        return None
    metadata = dict(materialization.metadata)
    origin = metadata.pop(REUSED_FROM, None)
    origin_run = origin.value if isinstance(origin, dg.TextMetadataValue) else records[0].run_id
    data_version = (materialization.tags or {}).get(DATA_VERSION)
    context.log.info(f"{key.to_user_string()}: reused run {origin_run[:8]}'s result (built meanwhile)")
    checks = [
        dg.AssetCheckResult(
            check_name=evaluation.check_name,
            passed=evaluation.passed,
            severity=evaluation.severity,
            metadata={**evaluation.metadata, REUSED_FROM: origin_run},
        )
        for evaluation in _check_evaluations(context.instance, records[0].run_id, key)
    ]
    output = dg.Output(
        Stored({**metadata, REUSED_FROM: origin_run}),
        data_version=dg.DataVersion(data_version) if data_version else None,
    )
    return [output, *checks]


def _check_evaluations(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> list[Any]:
    """The asset checks of ``key`` that run ``run_id`` evaluated (it materialized one partition)."""
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [e.dagster_event.event_specific_data for e in events if e.dagster_event]
    return [e for e in evaluations if isinstance(e, dg.AssetCheckEvaluation) and e.asset_key == key]
