"""Where artifacts live: the only module that knows paths.

Every IO manager stores under ``root`` (a local directory or any fsspec URL, through universal-pathlib)
at ``root/<dataset>/<asset>/...``, one file (or directory) per partition. A run materializes one
partition (so each gets its own content data version); a partitioned upstream arrives as
``{partition_key: value}`` with every partition the downstream partition depends on.

Writes are atomic. Multi-file artifacts (shard sets, checkpoints) are content-addressed files
committed by a small JSON record written last; until the record is replaced, the previous record and
every file it names stay intact; then those move to the kept versions (:func:`versions.settle`), so
the directory holds exactly the current files. How that is made safe depends on the storage, and is
decided in one place, :func:`store_for` (chosen by the root's URL):

- local disk (:class:`LocalStore`): bytes go to a temporary name and are renamed into place; a commit
  holds an exclusive ``flock`` on its directory and a load a shared one, so two writers of the same
  artifact never interleave (one wins whole) and a reader never sees files vanish under it;
- object storage (:class:`ObjectStore`, e.g. ``s3://bucket/prefix``), which has neither rename (fsspec's
  is copy-then-delete) nor locks: content files are put first, then the record with a conditional put
  (``If-None-Match: *`` for the first version, ``If-Match`` on the ETag read when the commit began
  afterwards), so of two concurrent writers exactly one record wins whole and the other gets a
  :class:`CommitConflict`. Files are deleted only when neither the new record nor the one it replaced
  names them and both they and that replaced record are older than a grace period, so a reader
  mid-load keeps its files. A single-file artifact (.gz, .npy) is one object put whole: S3 shows an
  object only once its upload completed, so a reader sees the old or the new, never a part.

Large artifacts stream, so memory does not grow with the dataset: a download and an idx array are
written in chunks to a staged file (:meth:`ArtifactIOManager.staged`) and loaded memory-mapped; a shard
set is committed one Parquet file at a time (:meth:`ShardSetIOManager.commit`). Those assets write
through their IO manager while they compute and return a :class:`Stored` receipt.

Storage faults (a full disk, a read-only filesystem, a vanished directory, an object-store error) reach
the user as one sentence made in one place, :func:`storage_failure`: what was being written or read,
where, the system's reason and what to do. On local disk a write that cannot fit is refused before its
first byte (:func:`ensure_room`), and a commit that fails removes what it wrote before it raises.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import mmap
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, ClassVar, Protocol

import dagster as dg
import numpy as np
from upath import UPath

from mnist_assets import versions
from mnist_assets.hashing import sha256
from mnist_assets.manifest import CheckpointRecord, Manifest
from mnist_assets.settings import DEFAULT_KEEP, DEFAULT_LEASE_SECONDS, DEFAULT_STORAGE
from mnist_assets.shards import EncodedShardSet, ShardSet, decode

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StorageError(dg.Failure):
    """A stored artifact is missing or does not match its record, or the storage refused a read or write.

    A :class:`dagster.Failure`, so Dagster's event log and UI show its sentence itself rather than
    "Error occurred while handling output" with the cause further down."""


class CommitConflict(StorageError):
    """Another writer committed the same artifact while this one was writing; its version stands."""


REPAIR = (
    "materialize it again to repair "
    "(`mnist-assets refresh --verify` finds and rebuilds every damaged artifact)"
)


def _safe(name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise StorageError(f"refusing unsafe storage name {name!r}")
    return name


def _safe_relative(name: str) -> str:
    """A content file's path under its record's directory: every component a safe name."""
    return "/".join(_safe(part) for part in name.split("/"))


def write_atomic(path: UPath, data: bytes) -> None:
    ensure_room(path, len(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        temporary.rename(path)
    except BaseException:
        if temporary.exists():
            temporary.unlink()
        raise


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def _read(path: UPath, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(_missing(path, what)) from None


def _missing(path: UPath, what: str) -> str:
    return f"{what}: {path} is missing; materialize the asset (again) to rebuild it"


STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}
    | {errno.ENOTDIR, errno.EIO}
)
"""Local OSErrors that are the storage's doing (any OSError is, on object storage)."""

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_WHAT_TO_DO = {
    errno.EROFS: "remount that filesystem read-write or point MNIST_ASSETS_STORAGE at writable storage",
    errno.EACCES: "let this user write there or point MNIST_ASSETS_STORAGE at storage it may write",
    errno.ENOENT: "a directory on the way vanished (storage root deleted or unmounted?): restore it",
    errno.EIO: "the device reported an I/O error: check the disk",
}
_WHAT_TO_DO[errno.EPERM] = _WHAT_TO_DO[errno.EACCES]
_WHAT_TO_DO[errno.ENOTDIR] = _WHAT_TO_DO[errno.ENOENT]


def storage_failure(
    error: OSError, action: str, what: str, path: UPath, needed: int | None = None
) -> StorageError:
    """The one plain sentence for a storage fault: what was being written or read, where, the operating
    system's reason, and what to do; for a full disk also the bytes needed (when known), the bytes
    free and on which filesystem. The previous committed version always stays, so the sentence says so."""
    reason = error.strerror or str(error)
    if isinstance(error, NoRoom):  # refused up front: it knows the file and its size
        needed, path = error.needed, error.path
    if error.errno in _FULL:
        todo = "free space there or point MNIST_ASSETS_STORAGE at a larger disk"
        if is_local(path):
            reason += _space(path, needed)
    elif is_local(path):
        todo = _WHAT_TO_DO.get(error.errno or 0, "check the storage")
    else:
        todo = "check the storage URL, its credentials and the service"
    kept = " The previous version, if any, is kept." if action == "write" else ""
    return StorageError(
        f"{what}: could not {action} {path}: {reason}.{kept} What to do: {todo}, then refresh again."
    )


def _space(path: UPath, needed: int | None) -> str:
    """`` (N bytes needed, M bytes free on the filesystem mounted at /mount)`` for a local path."""
    mount = _existing(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    wanted = "" if needed is None else f"{needed:,} bytes needed, "
    return f" ({wanted}{_free(path):,} bytes free on the filesystem mounted at {mount})"


def _existing(path: UPath) -> str:
    """The nearest existing directory on the way to local ``path`` (which may not exist yet)."""
    existing = os.path.abspath(path.path)  # file:// URLs too
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    return existing


def _free(path: UPath) -> int:
    return shutil.disk_usage(_existing(path)).free


ROOM_MARGIN = 64 * 1024
"""Besides 5 % of a write's size, what a local write must leave free (block rounding, file system
metadata, and the other writers on that disk, such as the Dagster instance's database)."""


class NoRoom(OSError):
    """ENOSPC raised before writing: the write would (nearly) fill its disk; ``needed`` counts the
    margin, so the sentence never says more bytes are free than were needed."""

    def __init__(self, path: UPath, needed: int):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path, self.needed = path, needed


def ensure_room(path: UPath, needed: int | None) -> None:
    """Refuse a local write of ``needed`` bytes up front when the filesystem cannot take it with the
    margin: failing early beats half-writing a file and leaving the disk full for everyone else."""
    if needed is not None and is_local(path) and _free(path) < needed + needed // 20 + ROOM_MARGIN:
        raise NoRoom(path, needed + needed // 20 + ROOM_MARGIN)


@contextlib.contextmanager
def plainly(action: str, what: str, path: UPath, needed: int | None = None) -> Iterator[None]:
    """Storage faults inside the block become :func:`storage_failure`'s sentence about ``path``."""
    try:
        yield
    except OSError as error:
        if is_local(path) and error.errno not in STORAGE_ERRNOS:
            raise
        raise storage_failure(error, action, what, path, needed) from error


def _label(asset_key: dg.AssetKey, partition: str | None) -> str:
    """``dataset/asset[partition]``, as people write it."""
    return asset_key.to_user_string() + (f"[{partition}]" if partition else "")


@dataclass(frozen=True)
class Stored:
    """An asset's value that is already in storage: assets that stream large artifacts write them
    through their IO manager while computing (so memory does not grow with the data) and return this
    receipt, whose metadata ``handle_output`` records without writing anything."""

    metadata: dict[str, Any]


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Shared layout and partition handling; subclasses say how one value becomes bytes."""

    root: str = DEFAULT_STORAGE
    grace_seconds: float = 3600.0
    """On object storage, how long a file no record names any more is kept: a reader that opened the
    record it belonged to has this long to finish (see :class:`ObjectStore`)."""
    keep_versions: int = DEFAULT_KEEP
    """How many committed versions of each artifact partition stay for rollback (see
    :mod:`mnist_assets.versions`), besides the current one."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a partition's lease lasts unless renewed (see :mod:`mnist_assets.leases`)."""
    record_kind: ClassVar[RecordKind | None] = None
    """The record that commits a multi-file artifact; None for single-file artifacts."""

    def storage(self) -> Store:
        """How commits are made safe where ``root`` lives (chosen once, by its URL)."""
        return store_for(UPath(self.root), timedelta(seconds=self.grace_seconds))

    def artifact(self, asset_key: dg.AssetKey, partition: str | None) -> versions.Artifact:
        """One partition's current file (or record) and kept versions, as :mod:`versions` sees them."""
        return self.artifact_at(self.location(asset_key, partition))

    def new_version(self, record_path: UPath) -> Kept:
        """The version a commit of this record is about to be kept as."""
        return Kept(self.artifact_at(record_path), versions.new_id())

    def artifact_at(self, current: UPath) -> versions.Artifact:
        current, root = UPath(current), UPath(self.root)
        relative = current.parent.path[len(root.path.rstrip("/")) + 1 :]
        kept_dir = root / versions.VERSIONS / relative
        if self.record_kind is None:
            kept_dir = kept_dir / current.stem
        directory = current.parent if self.record_kind else kept_dir
        local = is_local(root)
        return versions.Artifact(
            current=current,
            kept_dir=kept_dir,
            keep=max(self.keep_versions, 1),
            record=self.record_kind,
            lock=(lambda: _locked(directory, exclusive=True)) if local else contextlib.nullcontext,
        )

    def asset_dir(self, asset_key: dg.AssetKey) -> UPath:
        return UPath(self.root).joinpath(*(_safe(part) for part in asset_key.path))

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        """The file whose presence means the artifact exists (written last)."""
        raise NotImplementedError

    def location(self, asset_key: dg.AssetKey, partition: str | None) -> UPath:
        directory = self.asset_dir(asset_key)
        return self.record_path(directory, None if partition is None else _safe(partition))

    def exists(self, asset_key: dg.AssetKey, partition: str | None) -> bool:
        """Cheap: the artifact's files are present (with their recorded sizes, where recorded)."""
        return self.location(asset_key, partition).exists()

    def verify(self, asset_key: dg.AssetKey, partition: str | None) -> str | None:
        """Thorough: load and check the artifact; the problem, or None when it is intact."""
        directory = self.asset_dir(asset_key)
        try:
            self.fetch(directory, None if partition is None else _safe(partition), asset_key.to_user_string())
        except (StorageError, ValueError, OSError) as error:
            return str(error)
        return None

    @contextlib.contextmanager
    def staged(
        self, asset_key: dg.AssetKey, partition: str | None, expected_bytes: int | None = None
    ) -> Iterator[StagedFile]:
        """The partition's file to write in chunks (``staged.file``), for single-file artifacts: it
        replaces the stored file only on ``staged.commit()``, and is removed if the block ends without
        it (a refused or failed write keeps the previous artifact), and kept as a version when it is. With
        ``expected_bytes``, a local disk without room for them refuses before the first byte
        (:func:`ensure_room`)."""
        artifact = self.artifact(asset_key, partition)
        with plainly("write", _label(asset_key, partition), artifact.current):
            ensure_room(artifact.current, expected_bytes)
            with self.storage().staged(artifact.current) as staged:
                publish = staged.publish

                def publish_kept(temporary: UPath, path: UPath) -> None:
                    kept = versions.keep_file(artifact, lambda: publish(temporary, path))
                    staged.metadata["version"] = kept

                staged.publish = publish_kept
                yield staged

    # one value <-> storage, per partition (partition None for unpartitioned assets)
    def store(self, directory: UPath, partition: str | None, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def fetch(self, directory: UPath, partition: str | None, what: str) -> Any:
        raise NotImplementedError

    def write_file(self, directory: UPath, partition: str | None, data: bytes) -> dict[str, Any]:
        """Replace a single-file artifact whole and keep it as a version; its metadata."""
        path = self.record_path(directory, partition)
        version = versions.keep_file(self.artifact_at(path), lambda: self.storage().write(path, data))
        return {"path": dg.MetadataValue.path(str(path)), "bytes": len(data), "version": version}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if isinstance(obj, Stored):
            context.add_output_metadata(obj.metadata)
            return
        partition = _safe(context.asset_partition_key) if context.has_asset_partitions else None
        path = self.location(context.asset_key, partition)
        with plainly("write", _label(context.asset_key, partition), path):
            context.add_output_metadata(self.store(self.asset_dir(context.asset_key), partition, obj))

    def load_input(self, context: dg.InputContext) -> Any:
        if not context.has_asset_partitions:
            return self._load(context.asset_key, None)
        return {key: self._load(context.asset_key, _safe(key)) for key in context.asset_partition_keys}

    def _load(self, asset_key: dg.AssetKey, partition: str | None) -> Any:
        what = _label(asset_key, partition)
        with plainly("read", what, self.location(asset_key, partition)):
            return self.fetch(self.asset_dir(asset_key), partition, what)


class GzipIOManager(ArtifactIOManager):
    """Raw downloads, kept byte-for-byte as fetched. A download streams into a :meth:`staged` file,
    committed once its content verified, so memory does not grow with the file. Loaded memory-mapped
    from local storage (a read-only ``mmap``, used like ``bytes``), so the idx step does not hold the
    file; other fsspec storage reads it into memory."""

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        return directory / f"{partition or 'value'}.gz"

    def store(self, directory, partition, value: bytes):
        return self.write_file(directory, partition, value)

    def fetch(self, directory, partition, what) -> bytes | mmap.mmap:
        path = self.record_path(directory, partition)
        if not is_local(path):
            return _read(path, what)
        try:
            with open(str(path), "rb") as file:
                if os.fstat(file.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise StorageError(_missing(path, what)) from None


Publish = Callable[[UPath, UPath], Any]
"""Puts a finished temporary file (first) in place of the artifact's path (second), atomically."""


class StagedFile:
    """A file written under a temporary name, published in place of its final one on :meth:`commit`
    (see :meth:`ArtifactIOManager.staged`)."""

    def __init__(self, path: UPath, temporary: UPath, file: BinaryIO, publish: Publish):
        self.path, self.temporary, self.file, self.publish = path, temporary, file, publish
        self.metadata: dict[str, Any] = {}
        """Recorded with the receipt besides path and bytes (the version :meth:`publish` kept)."""

    def restart(self) -> BinaryIO:
        """The file emptied, to write again from the start (a download's next attempt)."""
        self.file.close()
        self.file = self.temporary.open("wb")
        return self.file

    def commit(self) -> Stored:
        """Publish the written file in place (atomic); the receipt to return as the asset's value."""
        self.file.close()
        self.publish(self.temporary, self.path)
        size = self.path.stat().st_size
        return Stored({"path": dg.MetadataValue.path(str(self.path)), "bytes": size, **self.metadata})


class NumpyIOManager(ArtifactIOManager):
    """Arrays as ``.npy``; loading never unpickles (object arrays are refused).

    Large arrays are written in chunks through :meth:`staged` and loaded memory-mapped from local
    storage, so neither direction holds a whole array in memory. Other fsspec storage has no memory
    maps: there a load reads the whole file into memory.
    """

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        return directory / f"{partition or 'value'}.npy"

    def store(self, directory, partition, value: np.ndarray):
        if value.dtype.hasobject:
            raise StorageError("object arrays cannot be stored without pickle")
        sink = io.BytesIO()
        np.save(sink, value, allow_pickle=False)
        return self.write_file(directory, partition, sink.getvalue())

    def fetch(self, directory, partition, what):
        path = self.record_path(directory, partition)
        try:
            if is_local(path):  # memory-mapped: pages are read when used, never the whole file at once
                return np.load(str(path), mmap_mode="r", allow_pickle=False)
            return np.load(io.BytesIO(_read(path, what)), allow_pickle=False)
        except FileNotFoundError:
            raise StorageError(_missing(path, what)) from None
        except ValueError as error:
            raise StorageError(
                f"{what}: {path} is not a plain .npy array ({error}); .npy artifacts are read with "
                "allow_pickle=False, so object arrays are refused"
            ) from error


Put = Callable[[str, bytes], None]
"""Writes one named file of a commit (the content files first, the record last)."""


@dataclass(frozen=True)
class RecordKind:
    """A commit's record: its file name, and which content files a stored one names, with their sha256
    where it records one (what garbage collection must keep, and what a rollback verifies)."""

    name: str
    digests: Callable[[bytes], Mapping[str, str | None]]

    def names(self, data: bytes) -> Iterable[str]:
        return self.digests(data).keys()


def _checkpoint_digests(data: bytes) -> dict[str, str | None]:
    record = CheckpointRecord.model_validate_json(data)
    return {record.file: record.sha256, **dict.fromkeys(record.logs)}


_MANIFEST = RecordKind(
    "_manifest.json", lambda data: {s.file: s.sha256 for s in Manifest.from_json(data).shards}
)
_CHECKPOINT = RecordKind("checkpoint.json", _checkpoint_digests)


class Store(Protocol):
    """How artifacts are written safely on one kind of storage; :func:`store_for` picks one."""

    def write(self, path: UPath, data: bytes) -> None:
        """Replace a single-file artifact whole (a reader sees the old bytes or the new)."""

    def staged(self, path: UPath) -> contextlib.AbstractContextManager[StagedFile]:
        """A single-file artifact written in chunks, published only by ``StagedFile.commit``."""

    def committing(
        self, directory: UPath, record: RecordKind, kept: Kept | None = None
    ) -> contextlib.AbstractContextManager[Put]:
        """A commit of content-addressed files: the caller ``put``s each file, then the record naming
        them, last. If the block fails, the previous record and every file it names stay intact.
        ``kept``: the record is also kept as that version, and files kept versions name stay."""

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        """Held while a reader opens a record and its files."""


@dataclass(frozen=True)
class Kept:
    """A commit's version: the artifact as :mod:`versions` sees it and the id the commit gets."""

    artifact: versions.Artifact
    version: str


def store_for(root: UPath, grace: timedelta) -> Store:
    return LocalStore() if is_local(root) else ObjectStore(grace)


class LocalStore:
    """Local disk: temporary names renamed into place, and ``flock`` on the artifact's directory."""

    def write(self, path: UPath, data: bytes) -> None:
        write_atomic(path, data)

    @contextlib.contextmanager
    def staged(self, path: UPath) -> Iterator[StagedFile]:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        staged = StagedFile(path, temporary, temporary.open("wb"), UPath.rename)
        try:
            yield staged
        finally:
            with contextlib.suppress(OSError):  # flushing the rest fails again on a full disk: still remove
                staged.file.close()
            if temporary.exists():
                temporary.unlink()

    @contextlib.contextmanager
    def committing(self, directory: UPath, record: RecordKind, kept: Kept | None = None) -> Iterator[Put]:
        """Under the directory's exclusive lock; afterwards the directory holds exactly what the record
        names (:func:`versions.settle`: files only kept versions name move to the kept ones, files
        nothing names and temporary files of writers that died go; under the lock no live writer has
        any)."""
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:  # always rewritten: a same-named file may be damaged
            write_atomic(directory / (name if name == record.name else _safe_relative(name)), data)
            written.add(name)

        with _locked(directory, exclusive=True):
            try:
                yield put
            except BaseException:
                _drop_uncommitted(directory, record, kept)
                raise
            if kept is None:
                versions.delete_files(versions.unnamed(directory, written), directory)
                return
            if record.name in written:
                versions.keep_record(kept.artifact, (directory / record.name).read_bytes(), kept.version)
            versions.settle(kept.artifact)  # the replaced version's files go to the kept ones

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return _locked(directory, exclusive=False)


def _drop_uncommitted(directory: UPath, record: RecordKind, kept: Kept | None) -> None:
    """A failed local commit gives its space back before it raises: what it wrote that neither the record
    in place nor a kept version names (a same-named file is the same content, so theirs stays), and
    temporary files (under the commit's lock, no live writer has any)."""
    with contextlib.suppress(OSError):  # e.g. the directory vanished: the cause is the error to report
        in_place = kept.artifact.named() if kept else _names_in(directory / record.name, record)
        named = {record.name} | in_place
        versions.delete_files(versions.unnamed(directory, named), directory)


def _names_in(path: UPath, record: RecordKind) -> set[str]:
    """The content files a stored record names (none if it is absent or damaged)."""
    try:
        return set(record.names(path.read_bytes()))
    except (FileNotFoundError, ValueError):
        return set()


@contextlib.contextmanager
def _locked(directory: UPath, exclusive: bool) -> Iterator[None]:
    """An advisory lock on ``directory``: a commit holds it exclusively, a reader opening files shared."""
    if not exclusive and not directory.exists():
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(directory / ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _StoredRecord:
    etag: str
    modified: datetime
    names: frozenset[str]


class ObjectStore:
    """S3-compatible storage through fsspec: no rename and no lock, so a commit is made safe by a
    conditional put of its record (see the module docstring); objects appear only whole."""

    def __init__(self, grace: timedelta):
        self.grace = grace

    def write(self, path: UPath, data: bytes) -> None:
        path.fs.pipe_file(path.path, data)

    @contextlib.contextmanager
    def staged(self, path: UPath) -> Iterator[StagedFile]:
        """Written to a local scratch file, uploaded by the commit as one object."""
        with tempfile.TemporaryDirectory(prefix="mnist-assets-upload-") as scratch:
            temporary = UPath(scratch) / path.name
            staged = StagedFile(path, temporary, temporary.open("wb"), _upload)
            try:
                yield staged
            finally:
                staged.file.close()

    @contextlib.contextmanager
    def committing(self, directory: UPath, record: RecordKind, kept: Kept | None = None) -> Iterator[Put]:
        """A failed commit leaves the objects it put to :meth:`_collect`: without a lock, another writer
        of the same version may have put the same names and be about to commit a record naming them."""
        fs, record_path = directory.fs, directory / record.name
        previous = _stored_record(record_path, record)  # the version this commit replaces
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:  # always rewritten: a same-named object may be damaged
            if name == record.name:
                _put_record(record_path, data, previous)
            else:
                fs.pipe_file((directory / _safe_relative(name)).path, data)
            written.add(name)

        yield put
        if record.name in written:
            named = written | (previous.names if previous else set())
            if kept is not None:  # copies of the files only kept versions name, before _collect
                versions.keep_record(kept.artifact, fs.cat_file(record_path.path), kept.version)
                versions.settle(kept.artifact)
            self._collect(directory, record_path, named, previous)

    def _collect(
        self, directory: UPath, record_path: UPath, keep: set[str], previous: _StoredRecord | None
    ) -> None:
        """Delete the objects neither the new record nor the one it replaced names, once they are older
        than the grace period, and only if the replaced record is too (files it did not name had stopped
        being named when it was written; a reader may still hold them until the grace period ends).
        Ages are measured on the server's clock: the new record's time stamp is now."""
        fs = directory.fs
        cutoff = fs.info(record_path.path, refresh=True)["LastModified"] - self.grace
        if previous is not None and previous.modified > cutoff:
            return
        for entry in fs.ls(directory.path, detail=True, refresh=True):
            name = entry["name"].rsplit("/", 1)[-1]
            if entry["type"] == "file" and name not in keep and entry["LastModified"] < cutoff:
                fs.rm_file(entry["name"])
        fs.invalidate_cache(directory.path)

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # files stay for the grace period after their record is replaced


def _upload(temporary: UPath, path: UPath) -> None:
    path.fs.put_file(str(temporary), path.path)


def _stored_record(path: UPath, record: RecordKind) -> _StoredRecord | None:
    """The record now in storage, with its ETag (None if there is none). Read after the ETag: if the
    record changes in between, the commit's If-Match fails, which is the safe side."""
    try:
        info = path.fs.info(path.path, refresh=True)
        data = path.fs.cat_file(path.path)
    except FileNotFoundError:
        return None
    try:
        names = frozenset(record.names(data))
    except ValueError:  # a damaged record names nothing a reader could use
        names = frozenset()
    return _StoredRecord(info["ETag"], info["LastModified"], names)


def _put_record(path: UPath, data: bytes, previous: _StoredRecord | None) -> None:
    """Write the record only if it is still the version the commit began from."""
    condition: dict[str, str] = {"IfMatch": previous.etag} if previous else {"mode": "create"}
    try:
        path.fs.pipe_file(path.path, data, **condition)
    except OSError as error:
        if not is_precondition_failure(error):
            raise
        raise CommitConflict(
            f"{path}: another writer committed this artifact while this one was writing; its version "
            "stands whole, and this commit's files are left to the garbage collection. Materialize "
            "the asset again to build on the new version."
        ) from error
    finally:
        path.fs.invalidate_cache(path.parent.path)


def is_precondition_failure(error: OSError) -> bool:
    """s3fs raises FileExistsError for a failed If-None-Match and EINVAL for a failed If-Match (AWS
    answers 409 ConditionalRequestConflict while another conditional write of the key is in flight)."""
    message = str(error)
    return (
        isinstance(error, FileExistsError)
        or (error.errno == errno.EINVAL and "condition" in message.lower())
        or "ConditionalRequestConflict" in message
    )


def _commit(
    store: Store, directory: UPath, files: Mapping[str, bytes], record: RecordKind, data: bytes, kept: Kept
) -> str:
    """Write content-addressed files, then the record naming them (see :meth:`Store.committing`); the
    version it is kept as."""
    with store.committing(directory, record, kept) as put:
        for name, content in files.items():
            put(name, content)
        put(record.name, data)
    return kept.version


def _all_present(directory: UPath, sizes: Mapping[str, int | None]) -> bool:
    """Every named file exists with its recorded size (``None``: size not recorded)."""
    try:
        return all(size in (None, (directory / _safe(name)).stat().st_size) for name, size in sizes.items())
    except (FileNotFoundError, StorageError):
        return False


class ShardSetIOManager(ArtifactIOManager):
    """Parquet shard sets under ``<split>/``, committed by ``_manifest.json``; verified on every load."""

    record_kind = _MANIFEST

    def record_path(self, directory, partition):
        return directory / (partition or "all") / "_manifest.json"

    def store(self, directory, partition, value: EncodedShardSet):
        split_dir = directory / (partition or "all")
        manifest, kept = value.manifest, self.new_version(split_dir / _MANIFEST.name)
        _commit(self.storage(), split_dir, value.files, _MANIFEST, manifest.to_json().encode(), kept)
        return {**self._metadata(directory, partition, manifest), "version": kept.version}

    def commit(self, asset_key: dg.AssetKey, split: str, write: Callable[[Put], Manifest]) -> Stored:
        """Commit a shard set produced one file at a time: ``write(put)`` puts each Parquet file as it
        is encoded and returns the manifest naming them, which is written last. The split's directory is
        locked throughout, so a concurrent writer waits (one wins whole) and so does a reader opening
        the split; what was committed before stays readable until the manifest is replaced."""
        directory, what = self.asset_dir(asset_key), _label(asset_key, split)
        split_dir = directory / _safe(split)
        kept = self.new_version(split_dir / _MANIFEST.name)

        def put_plainly(name: str, data: bytes) -> None:  # at the failing file: bytes needed, free now
            with plainly("write", what, split_dir / name, needed=len(data)):
                put(name, data)

        with plainly("write", what, split_dir), self.storage().committing(split_dir, _MANIFEST, kept) as put:
            manifest = write(put_plainly)
            put_plainly(_MANIFEST.name, manifest.to_json().encode())
        return Stored({**self._metadata(directory, split, manifest), "version": kept.version})

    def _metadata(self, directory: UPath, partition: str | None, manifest: Manifest) -> dict[str, Any]:
        return {
            "path": dg.MetadataValue.path(str(directory / (partition or "all") / "_manifest.json")),
            "dagster/row_count": manifest.rows,
            "shards": len(manifest.shards),
            "bytes": sum(s.bytes for s in manifest.shards),
            "root_sha256": manifest.root_sha256,
        }

    def exists(self, asset_key, partition):
        record = self.location(asset_key, partition)
        try:
            manifest = Manifest.from_json(record.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return _all_present(record.parent, {s.file: s.bytes for s in manifest.shards})

    def verify(self, asset_key: dg.AssetKey, partition: str | None) -> str | None:
        """Every shard's bytes against the manifest, one file at a time: memory stays one chunk."""
        try:
            shard_set = self.open(asset_key, partition or "all")
        except (StorageError, ValueError, OSError) as error:
            return str(error)
        what = f"{asset_key.to_user_string()}[{partition or 'all'}]"
        with contextlib.closing(shard_set):
            for entry in shard_set.manifest.shards:
                if _sha256_of(shard_set.files[entry.file]) != entry.sha256:
                    return damaged_shard(what, entry.file, shard_set.location)
        return None

    def open(self, asset_key: dg.AssetKey, split: str) -> OpenShardSet:
        """The current manifest of ``split`` with every shard file opened, not yet read or verified."""
        split_dir = self.asset_dir(asset_key) / _safe(split)
        what = f"{asset_key.to_user_string()}[{split}]"
        with self.storage().reading(split_dir):
            manifest = _read_manifest(split_dir, what)
            files: dict[str, BinaryIO] = {}
            try:
                for shard in manifest.shards:
                    files[shard.file] = (split_dir / _safe(shard.file)).open("rb")
            except FileNotFoundError as error:
                OpenShardSet(manifest, files, str(split_dir)).close()
                raise StorageError(f"{what}: {error.filename} is missing; {REPAIR}") from None
        return OpenShardSet(manifest, files, str(split_dir))

    def fetch(self, directory, partition, what):
        split_dir = directory / (partition or "all")
        with self.storage().reading(split_dir):
            manifest = _read_manifest(split_dir, what)
            files = {s.file: _read(split_dir / s.file, what) for s in manifest.shards}
        try:
            return ShardSet(manifest, decode(manifest, files))
        except ValueError as error:
            raise StorageError(f"{what}: {split_dir} is damaged ({error}); {REPAIR}") from error


def _sha256_of(handle: BinaryIO) -> str:
    """The sha256 of an open file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    handle.seek(0)
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(split_dir: UPath, what: str) -> Manifest:
    try:
        return Manifest.from_json(_read(split_dir / "_manifest.json", what))
    except ValueError as error:
        raise StorageError(
            f"{what}: {split_dir / '_manifest.json'} is invalid ({error}); {REPAIR}"
        ) from error


def damaged_shard(what: str, file: str, location: str) -> str:
    return f"{what}: shard {file} in {location} does not match its manifest sha256; {REPAIR}"


@dataclass(frozen=True)
class OpenShardSet:
    """A committed shard set whose files are open: a commit that replaces it later cannot take them
    away from this reader (locally an open file outlives its name; on object storage a replaced
    record's files are kept for the grace period), so a stream never sees files vanish."""

    manifest: Manifest
    files: dict[str, BinaryIO]
    location: str

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


@dataclass(frozen=True)
class StoredCheckpoint:
    """A verified ``.keras`` file and the record it was committed with."""

    keras_bytes: bytes
    record: CheckpointRecord
    location: str


class KerasIOManager(ArtifactIOManager):
    """Keras checkpoints as ``model-<sha>.keras`` committed by ``checkpoint.json``, with the training
    run's TensorBoard logs under ``tensorboard/<the model's sha16>/`` named by the record, so a kept
    version keeps its logs (with its model, under ``_versions/``) and ``tensorboard --logdir <root>``
    shows every run."""

    record_kind = _CHECKPOINT

    def record_path(self, directory, partition):
        return (directory if partition is None else directory / partition) / "checkpoint.json"

    def store(self, directory, partition, value):
        keras_bytes = value.keras_bytes
        digest = sha256(keras_bytes)
        name = f"model-{digest[:16]}.keras"
        logs_dir = f"tensorboard/{digest[:16]}"
        logs = {
            f"{logs_dir}/{_safe_relative(path)}": data for path, data in getattr(value, "logs", {}).items()
        }
        record = CheckpointRecord(
            **value.record, file=name, sha256=digest, bytes=len(keras_bytes), logs=tuple(sorted(logs))
        )
        target = directory if partition is None else directory / partition
        data = record.model_dump_json(indent=2).encode()
        kept = self.new_version(target / _CHECKPOINT.name)
        _commit(self.storage(), target, {name: keras_bytes, **logs}, _CHECKPOINT, data, kept)
        metadata = {"path": dg.MetadataValue.path(str(target / name)), "bytes": len(keras_bytes)}
        if logs:
            metadata["tensorboard"] = dg.MetadataValue.path(str(target / logs_dir))
        return {**metadata, "version": kept.version}

    def exists(self, asset_key, partition):
        record_path = self.location(asset_key, partition)
        try:
            record = CheckpointRecord.model_validate_json(record_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return _all_present(record_path.parent, {record.file: record.bytes})

    def fetch(self, directory, partition, what):
        target = directory if partition is None else directory / partition
        with self.storage().reading(target):
            try:
                record = CheckpointRecord.model_validate_json(_read(target / "checkpoint.json", what))
                path = target / _safe(record.file)
            except ValueError as error:
                raise StorageError(
                    f"{what}: {target / 'checkpoint.json'} is invalid ({error}); {REPAIR}"
                ) from error
            keras_bytes = _read(path, what)
        if sha256(keras_bytes) != record.sha256:
            raise StorageError(f"{what}: {path} does not match its recorded sha256; {REPAIR}")
        return StoredCheckpoint(keras_bytes, record, str(path))


def io_managers(
    root: str, keep_versions: int = DEFAULT_KEEP, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> dict[str, ArtifactIOManager]:
    """The resource map the definitions bind, one IO manager per artifact kind."""
    kinds: dict[str, type[ArtifactIOManager]] = {
        "gzip_io_manager": GzipIOManager,
        "npy_io_manager": NumpyIOManager,
        "shards_io_manager": ShardSetIOManager,
        "keras_io_manager": KerasIOManager,
        "json_io_manager": JsonRecordIOManager,
    }
    return {
        name: kind(root=root, keep_versions=keep_versions, lease_seconds=lease_seconds)
        for name, kind in kinds.items()
    }


class JsonRecordIOManager(ArtifactIOManager):
    """Small typed records (a pydantic model, e.g. best_model's choice) as ``record.json`` (or
    ``<partition>.json``), replaced whole and kept as versions like any single file; loaded as the
    parsed JSON."""

    def record_path(self, directory, partition):
        return directory / f"{partition or 'record'}.json"

    def store(self, directory, partition, value):
        return self.write_file(directory, partition, value.model_dump_json(indent=2).encode())

    def fetch(self, directory, partition, what) -> Any:
        import json

        path = self.record_path(directory, partition)
        try:
            return json.loads(_read(path, what))
        except ValueError as error:
            raise StorageError(f"{what}: {path} is not valid JSON ({error}); {REPAIR}") from error
