"""The local-disk backend: bytes go to a temporary name and are renamed into place; a commit holds an
exclusive ``flock`` on its directory and a load a shared one, so two writers of the same artifact never
interleave (one wins whole) and a reader never sees files vanish under it. A commit that fails removes
what it wrote before it raises, and a write that cannot fit is refused before its first byte."""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import os
from collections.abc import Iterable, Iterator

from upath import UPath

from mnist_assets.storage.backends import Keeping, Put, StagedFile
from mnist_assets.storage.faults import ensure_room, safe_relative
from mnist_assets.storage.files import temporary_name, unnamed, within, write_atomic
from mnist_assets.storage.records import RecordKind


class LocalBackend:
    """Local disk: temporary names renamed into place, and ``flock`` on the artifact's directory."""

    def write(self, path: UPath, data: bytes) -> None:
        _write(path, data)

    @contextlib.contextmanager
    def staged(self, path: UPath) -> Iterator[StagedFile]:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_name(path)
        staged = StagedFile(path, temporary, temporary.open("wb"), UPath.rename)
        try:
            yield staged
        finally:
            with contextlib.suppress(OSError):  # flushing the rest fails again on a full disk: still remove
                staged.file.close()
            if temporary.exists():
                temporary.unlink()

    @contextlib.contextmanager
    def committing(self, directory: UPath, record: RecordKind, kept: Keeping | None = None) -> Iterator[Put]:
        """Under the directory's exclusive lock; afterwards the directory holds exactly what the record
        names (:func:`versions.settle`: files only kept versions name move to the kept ones, files
        nothing names and temporary files of writers that died go; under the lock no live writer has
        any)."""
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:  # always rewritten: a same-named file may be damaged
            _write(directory / (name if name == record.name else safe_relative(name)), data)
            written.add(name)

        with locked(directory, exclusive=True):
            try:
                yield put
            except BaseException:
                _drop_uncommitted(directory, record, kept)
                raise
            if kept is None:
                self.delete(unnamed(directory, written), directory)
                return
            if record.name in written:
                kept.keep((directory / record.name).read_bytes())
            kept.settle()  # the replaced version's files go to the kept ones

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return locked(directory, exclusive=False)

    collects = True

    def lock(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return locked(directory, exclusive=True)

    def vanished(self, directory: UPath) -> bool:
        return not directory.exists()

    def same(self, a: UPath, b: UPath) -> bool:
        """The same inode (hard links), or the same bytes (a copy that did not keep the links, e.g.
        ``cp -r`` or ``rsync`` without ``-H``)."""
        try:
            if os.path.samefile(a.path, b.path):
                return True
            return a.stat().st_size == b.stat().st_size and filecmp.cmp(a.path, b.path, shallow=False)
        except FileNotFoundError:
            return False

    def keep_copy(self, source: UPath, target: UPath) -> None:
        """A hard link: no extra bytes (replacing ``source`` renames a new inode over its name)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source.path, target.path)

    def restore(self, source: UPath, target: UPath) -> None:
        temporary = temporary_name(target)
        os.link(source.path, temporary.path)
        os.replace(temporary.path, target.path)

    def move(self, source: UPath, target: UPath, top: UPath) -> None:
        """A rename (no bytes copied); the directories it leaves empty go."""
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source.path, target.path)
        _drop_empty_parents(source, top)

    def delete(self, paths: Iterable[UPath], top: UPath) -> None:
        """Also the subdirectories the files leave empty (a run's logs)."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _drop_empty_parents(path, top)

    def strays(self, directory: UPath, named: set[str]) -> list[UPath]:
        """Everything nothing names, and temporary files: under the lock no live writer has any."""
        return unnamed(directory, named)


def _drop_empty_parents(path: UPath, directory: UPath) -> None:
    """Remove the empty directories between ``path`` and ``directory`` (which stays)."""
    parent = path.parent
    while within(parent, directory) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _drop_uncommitted(directory: UPath, record: RecordKind, kept: Keeping | None) -> None:
    """A failed local commit gives its space back before it raises: what it wrote that neither the record
    in place nor a kept version names (a same-named file is the same content, so theirs stays), and
    temporary files (under the commit's lock, no live writer has any)."""
    with contextlib.suppress(OSError):  # e.g. the directory vanished: the cause is the error to report
        in_place = kept.named() if kept else _names_in(directory / record.name, record)
        named = {record.name} | in_place
        LocalBackend().delete(unnamed(directory, named), directory)


def _names_in(path: UPath, record: RecordKind) -> set[str]:
    """The content files a stored record names (none if it is absent or damaged)."""
    try:
        return set(record.names(path.read_bytes()))
    except (FileNotFoundError, ValueError):
        return set()


@contextlib.contextmanager
def locked(directory: UPath, exclusive: bool) -> Iterator[None]:
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


def _write(path: UPath, data: bytes) -> None:
    """Replace ``path`` whole, refused up front when its disk cannot take it (:func:`ensure_room`)."""
    ensure_room(path, len(data))
    write_atomic(path, data)
