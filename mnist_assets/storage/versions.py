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
How each copy, comparison, move, deletion and lock is made is the storage's backend's business
(:class:`~mnist_assets.storage.backends.Backend`): this module has no branch on the kind of storage.
What Dagster's event log says about versions (data versions, metrics, recording a rollback) is
:mod:`mnist_assets.history`'s business; this module only knows files.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from upath import UPath

from mnist_assets.storage.backends import Backend
from mnist_assets.storage.files import (
    file_sha256,
    files_under,
    is_temporary,
    relative,
    within,
    write_atomic,
)
from mnist_assets.storage.records import RecordKind

VERSIONS = "_versions"
FILES = "files"
"""Under a record artifact's kept directory: the content files only kept records name."""
_ID_TIME = "%Y%m%dT%H%M%S%fZ"


class VersionError(RuntimeError):
    """A version cannot be found, is damaged, or the request is ambiguous."""


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
    record: RecordKind | None
    backend: Backend
    """The storage's own ways to lock, copy, compare, move and delete (no branch on its kind here)."""

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The exclusive lock commits of this artifact take (on its directory for a record artifact,
        else on its kept versions'); a no-op where the backend has no locks."""
        return self.backend.lock(self.directory if self.record else self.kept_dir)

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
        same = self.backend.same
        return next((v for v in reversed(self.versions()) if same(self.current, self.path_of(v))), None)

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


@dataclass(frozen=True)
class Kept:
    """A commit's version: the artifact as versions see it and the id the commit gets (what a backend's
    commit calls back, as :class:`~mnist_assets.storage.backends.Keeping`)."""

    artifact: Artifact
    version: str

    def named(self) -> set[str]:
        return self.artifact.named()

    def keep(self, record: bytes) -> None:
        keep_record(self.artifact, record, self.version)

    def settle(self) -> None:
        settle(self.artifact)


def _digests(record: RecordKind, path: UPath) -> Mapping[str, str | None]:
    try:
        return record.digests(path.read_bytes())
    except (ValueError, FileNotFoundError):  # a damaged record names nothing a reader could use
        return {}


def keep_file(artifact: Artifact, publish: Callable[[], object]) -> str:
    """Publish a single-file artifact and keep it as a new version, under the artifact's lock (so two
    writers' versions never swap content); older versions beyond retention go. Returns the id."""
    version = new_id()
    if artifact.backend.vanished(artifact.current.parent):
        publish()  # its directory vanished (storage deleted or unmounted): this fails, and creates nothing
    with artifact.lock():
        publish()
        artifact.backend.keep_copy(artifact.current, artifact.path_of(version))
        _delete(artifact, prune(artifact))
    return version


def keep_record(artifact: Artifact, data: bytes, version: str) -> None:
    """Keep a record just committed as ``version``; older versions beyond retention go. Called with the
    artifact's lock held (by the commit)."""
    write_atomic(artifact.path_of(version), data)
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
        if digest is not None and file_sha256(content) != digest:
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
            _place(artifact, artifact.record.digests(data), artifact.files_dir, artifact.directory)
            write_atomic(artifact.current, data)  # the switch: all its files are beside it already
            settle(artifact)  # the replaced version's files go to the kept ones
        else:
            artifact.backend.restore(source, artifact.current)
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
    _place(artifact, current, artifact.files_dir, artifact.directory)
    _place(artifact, kept, artifact.directory, artifact.files_dir)
    gone = [p for p in files_under(artifact.files_dir) if relative(p, artifact.files_dir) not in kept]
    gone += artifact.backend.strays(artifact.directory, current | {artifact.current.name})
    _delete_paths(artifact, gone)


def _place(artifact: Artifact, names: Iterable[str], source_dir: UPath, target_dir: UPath) -> None:
    """Each named file that is in ``source_dir`` and not yet in ``target_dir`` moved there by the
    backend (locally a rename, no bytes copied; on object storage a server-side copy, the source going
    by the rules of where it was)."""
    for name in sorted(names):
        source, target = source_dir / name, target_dir / name
        if source.exists() and not target.exists():
            artifact.backend.move(source, target, source_dir)


def collect(artifact: Artifact, dry_run: bool, grace_seconds: float) -> list[Removed]:
    """Everything of this artifact no kept version nor the current one names, deleted (unless
    ``dry_run``) under its lock: versions beyond retention, content files no kept record names, and
    temporary files of writers that died (record artifacts: under the lock no live writer has any;
    single files, written outside it: those untouched for ``grace_seconds``). Then (unless
    ``dry_run``) a record artifact is settled: storage of the old layout gets its kept content files
    moved out of the asset's directory (moves are not listed: nothing is lost)."""
    if not artifact.backend.collects:
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
            temporaries = [p for p in files_under(directory) if is_temporary(p)]
        else:
            cutoff = time.time() - grace_seconds
            prefix = f".{artifact.current.name}."
            temporaries = [
                p
                for p in (directory.iterdir() if directory.exists() else [])
                if p.name.startswith(prefix) and is_temporary(p) and p.stat().st_mtime < cutoff
            ]
        found += [_removal(p, "temporary file of a writer that died") for p in temporaries]
        if not dry_run:
            _delete(artifact, found)
            if artifact.record:
                settle(artifact)
    return found


def _unnamed(artifact: Artifact, dropping: list[Removed]) -> list[UPath]:
    """Content files, beside the current record or among the kept files, that no record names but for
    the version records being dropped."""
    named, directory = artifact.named(dropping) | {artifact.current.name}, artifact.directory
    beside = [
        p for p in files_under(directory) if not is_temporary(p) and relative(p, directory) not in named
    ]
    files_dir = artifact.files_dir
    kept = [p for p in files_under(files_dir) if relative(p, files_dir) not in named]
    return sorted(beside + kept, key=str)


def _removal(path: UPath, why: str) -> Removed:
    return Removed(str(path), path.stat().st_size, why)


def _delete(artifact: Artifact, removals: Iterable[Removed]) -> None:
    _delete_paths(artifact, [UPath(removal.path) for removal in removals])


def _delete_paths(artifact: Artifact, paths: list[UPath]) -> None:
    """Delete files of the artifact, beside its current one or among its kept versions."""
    for top in (artifact.directory, artifact.kept_dir):
        artifact.backend.delete([p for p in paths if within(p, top)], top)
