"""Storage faults as one sentence: what was being written or read, where, the system's reason, what to do.

A full disk, a read-only filesystem, a vanished directory or an object-store error reach the user as
one sentence made in one place, :func:`storage_failure` (wrapped around a block by :func:`plainly`).
On local disk a write that cannot fit is refused before its first byte (:func:`ensure_room`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator

import dagster as dg
from upath import UPath

from mnist_assets.storage.files import is_local


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


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise StorageError(f"refusing unsafe storage name {name!r}")
    return name


def safe_relative(name: str) -> str:
    """A content file's path under its record's directory: every component a safe name."""
    return "/".join(safe_name(part) for part in name.split("/"))


def read_stored(path: UPath, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(missing(path, what)) from None


def missing(path: UPath, what: str) -> str:
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


def is_precondition_failure(error: OSError) -> bool:
    """s3fs raises FileExistsError for a failed If-None-Match and EINVAL for a failed If-Match (AWS
    answers 409 ConditionalRequestConflict while another conditional write of the key is in flight)."""
    message = str(error)
    return (
        isinstance(error, FileExistsError)
        or (error.errno == errno.EINVAL and "condition" in message.lower())
        or "ConditionalRequestConflict" in message
    )
