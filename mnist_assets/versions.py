"""Kept versions of every artifact partition: retention, rollback and collection, on storage.

A commit used to drop the previous artifact's files, so a worse model or a bad shard set could not be
taken back. Now every commit gets a version id (sortable by time, e.g. ``20261123T204500123456Z-1a2b3c4d``)
and the last ``keep`` versions of each artifact partition stay, plus the current one (after a rollback,
an old version is current and stays whatever its age).

Kept versions live apart, under ``<root>/_versions/<the artifact's directory>/``, so an asset's own
directory holds exactly its current files: a glob over it (``shards/train/*.parquet`` in DuckDB, polars
or pyarrow) reads the current rows and no others.

- a single-file artifact (``.gz``, ``.npy``) keeps each version as ``<partition>/<id><suffix>``: locally
  a hard link to the committed file (no extra bytes: replacing the current file renames a new inode over
  its name, the old inode stays with its link), on object storage a server-side copy;
- a record-committed artifact (shard set manifest, checkpoint record) keeps each committed record as
  ``<id>.json``, and the content files only kept records name under ``files/`` beside them (a file the
  current record names stays in the asset's directory, whoever else names it). After every change of
  the current record, :func:`settle` puts each file where it belongs: locally a rename (no bytes
  copied), on object storage a server-side copy (the asset's directory then loses the replaced files
  after the commits' grace period, so a reader mid-load keeps them). A content file goes when no
  record names it any more.

Storage written before content files moved out (kept content files beside the current ones) keeps
working: a content file is looked up beside the current record first, then in ``files/``; the next
commit, rollback or ``gc`` of the artifact settles it, moving each kept version's files out.

Every change (commit, rollback, collection) happens under the artifact's exclusive lock (the lock
commits already take; object storage has none), so a concurrent writer never loses a file it named.
What Dagster's event log says about versions (data versions, metrics, recording a rollback) is
:mod:`mnist_assets.history`'s business; this module only knows files.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from upath import UPath

VERSIONS = "_versions"
FILES = "files"
"""Under a record artifact's kept directory: the content files only kept records name."""
_ID_TIME = "%Y%m%dT%H%M%S%fZ"


class VersionError(RuntimeError):
    """A version cannot be found, is damaged, or the request is ambiguous."""


class Record(Protocol):
    """What a record-committed artifact's record says (``io_managers.RecordKind`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def digests(self) -> Callable[[bytes], Mapping[str, str | None]]:
        """Content file (relative path) → its sha256, or None where the record keeps none."""
        ...


def new_id() -> str:
    """A version id: when it was committed (to the microsecond, UTC) and a random suffix."""
    return f"{datetime.now(UTC):{_ID_TIME}}-{uuid.uuid4().hex[:8]}"


def committed_at(version: str) -> datetime:
    return datetime.strptime(version.split("-", 1)[0], _ID_TIME).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Removed:
    """A file collection deleted (or, in a dry run, would delete), and why."""

    path: str
    bytes: int
    why: str


@dataclass(frozen=True)
class Artifact:
    """One artifact partition as versions see it (made by ``ArtifactIOManager.artifact``)."""

    current: UPath
    """Today's path: the single file, or the record that commits the content files beside it."""
    kept_dir: UPath
    """Where its kept versions live."""
    keep: int
    record: Record | None
    lock: Callable[[], contextlib.AbstractContextManager[None]]
    """The exclusive lock commits of this artifact take (a no-op on object storage)."""

    @property
    def suffix(self) -> str:
        return ".json" if self.record else self.current.suffix

    @property
    def directory(self) -> UPath:
        """The asset's own directory: the current record and exactly the files it names."""
        return self.current.parent

    @property
    def files_dir(self) -> UPath:
        """Where the content files only kept records name live."""
        return self.kept_dir / FILES

    def path_of(self, version: str) -> UPath:
        return self.kept_dir / f"{version}{self.suffix}"

    def content(self, name: str) -> UPath:
        """Where a content file is: beside the current record, else among the kept files."""
        beside = self.directory / name
        return beside if beside.exists() else self.files_dir / name

    def versions(self) -> list[str]:
        """Kept version ids, oldest first."""
        if not self.kept_dir.exists():
            return []
        suffix = self.suffix
        found = (p.name[: -len(suffix)] for p in self.kept_dir.iterdir() if p.name.endswith(suffix))
        return sorted(v for v in found if not v.startswith("."))

    def current_version(self) -> str | None:
        """The kept version that is current (the newest, if several have identical content)."""
        if not self.current.exists():
            return None
        if self.record:
            data = self.current.read_bytes()
            return next((v for v in reversed(self.versions()) if self.path_of(v).read_bytes() == data), None)
        return next((v for v in reversed(self.versions()) if _same_file(self.current, self.path_of(v))), None)

    def named(self, dropping: Iterable[Removed] = ()) -> set[str]:
        """Content files the current record or any kept record names (record artifacts only), but for
        the version records being dropped."""
        return self.named_by_current() | self.named_by_kept(dropping)

    def named_by_current(self) -> set[str]:
        assert self.record is not None, "only a record names content files"
        return set(_digests(self.record, self.current)) if self.current.exists() else set()

    def named_by_kept(self, dropping: Iterable[Removed] = ()) -> set[str]:
        assert self.record is not None, "only a record names content files"
        dropped = {removal.path for removal in dropping}
        records = [self.path_of(v) for v in self.versions() if str(self.path_of(v)) not in dropped]
        return {name for path in records for name in _digests(self.record, path)}


def _digests(record: Record, path: UPath) -> Mapping[str, str | None]:
    try:
        return record.digests(path.read_bytes())
    except (ValueError, FileNotFoundError):  # a damaged record names nothing a reader could use
        return {}


def _same_file(a: UPath, b: UPath) -> bool:
    """Locally: the same inode (hard links), or the same bytes (a copy that did not keep the links, e.g.
    ``cp -r`` or ``rsync`` without ``-H``). On object storage: the same ETag (a server-side copy of a
    whole object keeps it)."""
    try:
        if not _is_local(a):
            return a.fs.info(a.path)["ETag"] == b.fs.info(b.path)["ETag"]
        if os.path.samefile(a.path, b.path):
            return True
        return a.stat().st_size == b.stat().st_size and filecmp.cmp(a.path, b.path, shallow=False)
    except FileNotFoundError:
        return False


def keep_file(artifact: Artifact, publish: Callable[[], object]) -> str:
    """Publish a single-file artifact and keep it as a new version, under the artifact's lock (so two
    writers' versions never swap content); older versions beyond retention go. Returns the id."""
    version = new_id()
    if _is_local(artifact.current) and not artifact.current.parent.exists():
        publish()  # its directory vanished (storage deleted or unmounted): this fails, and creates nothing
    with artifact.lock():
        publish()
        target = artifact.path_of(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_local(artifact.current):
            os.link(artifact.current.path, target.path)
        else:
            artifact.current.fs.copy(artifact.current.path, target.path)
        _delete(artifact, prune(artifact))
    return version


def keep_record(artifact: Artifact, data: bytes, version: str) -> None:
    """Keep a record just committed as ``version``; older versions beyond retention go. Called with the
    artifact's lock held (by the commit)."""
    _replace(artifact.path_of(version), data)
    _delete(artifact, prune(artifact))


def prune(artifact: Artifact) -> list[Removed]:
    """Kept versions beyond retention (never the current one): what to delete."""
    versions, current = artifact.versions(), artifact.current_version()
    beyond = versions[: max(len(versions) - artifact.keep, 0)]
    return [_removal(artifact.path_of(v), f"version {v} beyond retention") for v in beyond if v != current]


def verify(artifact: Artifact, version: str) -> str | None:
    """The problem with a kept version's files, or None when every one is there with its sha256."""
    path = artifact.path_of(version)
    if not path.exists():
        return f"version {version} of {artifact.current} is not kept (no {path})"
    if artifact.record is None:
        return None
    try:
        digests = artifact.record.digests(path.read_bytes())
    except ValueError as error:
        return f"version {version}: its record {path} is invalid ({error})"
    for name, digest in digests.items():
        content = artifact.content(name)
        if not content.exists():
            return f"version {version}: {content} is missing"
        if digest is not None and _sha256(content) != digest:
            return f"version {version}: {content} does not match its recorded sha256"
    return None


def rollback(artifact: Artifact, version: str) -> str | None:
    """Make a kept version current, after verifying its files, under the artifact's lock. Returns the
    version that was current before (None if none was)."""
    with artifact.lock():
        if problem := verify(artifact, version):
            raise VersionError(f"{problem}; refusing to roll back to it, nothing changed")
        previous = artifact.current_version()
        source = artifact.path_of(version)
        if artifact.record:
            data = source.read_bytes()  # verified: it names every file, each with its sha256
            _place(artifact.record.digests(data), artifact.files_dir, artifact.directory)
            _replace(artifact.current, data)  # the switch: all its files are beside it already
            settle(artifact)  # the replaced version's files go to the kept ones
        elif _is_local(artifact.current):
            temporary = artifact.current.with_name(f".{artifact.current.name}.{uuid.uuid4().hex}.tmp")
            os.link(source.path, temporary.path)
            os.replace(temporary.path, artifact.current.path)
        else:
            artifact.current.fs.copy(source.path, artifact.current.path)
    return previous


def settle(artifact: Artifact) -> None:
    """Put every content file of a record artifact where it belongs, with its lock held: after the
    current record changed (a commit, a rollback) and in ``gc``. The files the current record names
    stay beside it (brought back from ``files/`` if there), the files only kept records name go to
    ``files/``, and ``files/`` keeps nothing else. Locally the asset's directory then holds exactly
    the current files (what nothing names goes, and temporary files: under the lock no live writer has
    any); on object storage replaced files leave it with the commits' grace period, as before."""
    current = artifact.named_by_current()
    kept = artifact.named_by_kept() - current
    _place(current, artifact.files_dir, artifact.directory)
    _place(kept, artifact.directory, artifact.files_dir)
    gone = [p for p in _files(artifact.files_dir) if _relative(p, artifact.files_dir) not in kept]
    if _is_local(artifact.current):
        gone += unnamed(artifact.directory, current | {artifact.current.name})
    _delete_paths(artifact, gone)


def _place(names: Iterable[str], source_dir: UPath, target_dir: UPath) -> None:
    """Each named file that is in ``source_dir`` and not yet in ``target_dir`` moved there: locally a
    rename (no bytes copied; the directories it leaves empty go), on object storage a server-side copy
    (the source goes by the rules of where it was)."""
    for name in sorted(names):
        source, target = source_dir / name, target_dir / name
        if not source.exists() or target.exists():
            continue
        if _is_local(source):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source.path, target.path)
            _drop_empty_parents(source, source_dir)
        else:
            source.fs.copy(source.path, target.path)
            target.fs.invalidate_cache(target.parent.path)


def collect(artifact: Artifact, dry_run: bool, grace_seconds: float) -> list[Removed]:
    """Everything of this artifact no kept version nor the current one names, deleted (unless
    ``dry_run``) under its lock: versions beyond retention, content files no kept record names, and
    temporary files of writers that died (record artifacts: under the lock no live writer has any;
    single files, written outside it: those untouched for ``grace_seconds``). Then (unless
    ``dry_run``) a record artifact is settled: storage of the old layout gets its kept content files
    moved out of the asset's directory (moves are not listed: nothing is lost)."""
    if not _is_local(artifact.current):
        raise VersionError(
            f"{artifact.current}: gc runs on local storage only for now; on object storage each commit "
            "already deletes what no record names once the grace period has passed"
        )
    if not (artifact.current.parent.exists() or artifact.kept_dir.exists()):
        return []  # never stored: nothing to collect, and no lock file to leave behind
    with artifact.lock():
        found = prune(artifact)
        directory = artifact.current.parent
        if artifact.record:
            found += [_removal(p, "named by no kept version") for p in _unnamed(artifact, found)]
            temporaries = [p for p in _files(directory) if _is_temporary(p)]
        else:
            cutoff = time.time() - grace_seconds
            prefix = f".{artifact.current.name}."
            temporaries = [
                p
                for p in (directory.iterdir() if directory.exists() else [])
                if p.name.startswith(prefix) and _is_temporary(p) and p.stat().st_mtime < cutoff
            ]
        found += [_removal(p, "temporary file of a writer that died") for p in temporaries]
        if not dry_run:
            _delete(artifact, found)
            if artifact.record:
                settle(artifact)
    return found


def unnamed(directory: UPath, named: set[str]) -> list[UPath]:
    """With the artifact's lock held: the files under ``directory`` to drop, those not ``named`` and
    temporary files of writers that died (hidden files such as ``.lock`` stay)."""
    return [
        p
        for p in _files(directory)
        if _is_temporary(p) or not (p.name.startswith(".") or _relative(p, directory) in named)
    ]


def _unnamed(artifact: Artifact, dropping: list[Removed]) -> list[UPath]:
    """Content files, beside the current record or among the kept files, that no record names but for
    the version records being dropped."""
    named, directory = artifact.named(dropping) | {artifact.current.name}, artifact.directory
    beside = [p for p in _files(directory) if not _is_temporary(p) and _relative(p, directory) not in named]
    kept = [p for p in _files(artifact.files_dir) if _relative(p, artifact.files_dir) not in named]
    return sorted(beside + kept, key=str)


def _files(directory: UPath) -> Iterator[UPath]:
    """Every file under ``directory`` except lock files, subdirectories included."""
    if not directory.exists():
        return
    for path in directory.iterdir():
        if path.is_dir():
            yield from _files(path)
        elif path.name != ".lock":
            yield path


def _relative(path: UPath, directory: UPath) -> str:
    return path.path[len(directory.path.rstrip("/")) + 1 :]


def _is_temporary(path: UPath) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _removal(path: UPath, why: str) -> Removed:
    return Removed(str(path), path.stat().st_size, why)


def _delete(artifact: Artifact, removals: Iterable[Removed]) -> None:
    _delete_paths(artifact, [UPath(removal.path) for removal in removals])


def _delete_paths(artifact: Artifact, paths: list[UPath]) -> None:
    """Delete files of the artifact, beside its current one or among its kept versions."""
    for top in (artifact.directory, artifact.kept_dir):
        delete_files((p for p in paths if _within(p, top)), top)


def _within(path: UPath, directory: UPath) -> bool:
    return path.path.startswith(directory.path.rstrip("/") + "/")


def delete_files(paths: Iterable[UPath], directory: UPath) -> None:
    """Delete files under ``directory``, and (locally) the subdirectories they leave empty (a run's
    logs)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if _is_local(path):
            _drop_empty_parents(path, directory)


def _drop_empty_parents(path: UPath, directory: UPath) -> None:
    """Remove the empty directories between ``path`` and ``directory`` (which stays)."""
    parent = path.parent
    while _within(parent, directory) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _replace(path: UPath, data: bytes) -> None:
    """Write ``path`` whole: locally a temporary file renamed into place, on object storage one put."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_local(path):
        path.fs.pipe_file(path.path, data)
        return
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary.path, path.path)
    finally:  # a full disk must not keep the half-written copy (issue 16)
        temporary.unlink(missing_ok=True)


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def _sha256(path: UPath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
