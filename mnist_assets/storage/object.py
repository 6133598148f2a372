"""The object-storage backend (S3-compatible, e.g. ``s3://bucket/prefix``, through fsspec).

Object storage has neither rename (fsspec's is copy-then-delete) nor locks: content files are put first,
then the record with a conditional put (``If-None-Match: *`` for the first version, ``If-Match`` on the
ETag read when the commit began afterwards), so of two concurrent writers exactly one record wins whole
and the other gets a :class:`~mnist_assets.storage.faults.CommitConflict`. Files are deleted only when
neither the new record nor the one it replaced names them and both they and that replaced record are
older than a grace period, so a reader mid-load keeps its files. A single-file artifact (.gz, .npy) is one
object put whole: S3 shows an object only once its upload completed, so a reader sees the old or the new,
never a part.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from upath import UPath

from mnist_assets.storage.backends import Keeping, Put, StagedFile
from mnist_assets.storage.faults import CommitConflict, is_precondition_failure, safe_relative
from mnist_assets.storage.files import write_atomic
from mnist_assets.storage.records import RecordKind


@dataclass(frozen=True)
class _StoredRecord:
    etag: str
    modified: datetime
    names: frozenset[str]


class ObjectBackend:
    """S3-compatible storage through fsspec: no rename and no lock, so a commit is made safe by a
    conditional put of its record (see the module docstring); objects appear only whole."""

    def __init__(self, grace: timedelta):
        self.grace = grace

    def write(self, path: UPath, data: bytes) -> None:
        write_atomic(path, data)

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
    def committing(self, directory: UPath, record: RecordKind, kept: Keeping | None = None) -> Iterator[Put]:
        """A failed commit leaves the objects it put to :meth:`_collect`: without a lock, another writer
        of the same version may have put the same names and be about to commit a record naming them."""
        fs, record_path = directory.fs, directory / record.name
        previous = _stored_record(record_path, record)  # the version this commit replaces
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:  # always rewritten: a same-named object may be damaged
            if name == record.name:
                _put_record(record_path, data, previous)
            else:
                fs.pipe_file((directory / safe_relative(name)).path, data)
            written.add(name)

        yield put
        if record.name in written:
            named = written | (previous.names if previous else set())
            if kept is not None:  # copies of the files only kept versions name, before _collect
                kept.keep(fs.cat_file(record_path.path))
                kept.settle()
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

    collects = False  # each commit collects what no record names, once the grace period has passed

    def lock(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # no locks: commits are made safe by conditional puts

    def vanished(self, directory: UPath) -> bool:
        return False  # a prefix has no existence of its own

    def same(self, a: UPath, b: UPath) -> bool:
        """The same ETag (a server-side copy of a whole object keeps it)."""
        try:
            return bool(a.fs.info(a.path)["ETag"] == b.fs.info(b.path)["ETag"])
        except FileNotFoundError:
            return False

    def keep_copy(self, source: UPath, target: UPath) -> None:
        source.fs.copy(source.path, target.path)  # server-side

    def restore(self, source: UPath, target: UPath) -> None:
        source.fs.copy(source.path, target.path)  # one object replaced whole

    def move(self, source: UPath, target: UPath, top: UPath) -> None:
        """A server-side copy; the source goes by the rules of where it was (a grace period)."""
        source.fs.copy(source.path, target.path)
        target.fs.invalidate_cache(target.parent.path)

    def delete(self, paths: Iterable[UPath], top: UPath) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def strays(self, directory: UPath, named: set[str]) -> list[UPath]:
        return []  # replaced files leave with the commits' grace period


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
