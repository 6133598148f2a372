"""What a storage backend does for artifacts: the protocol every backend keeps, and what passes through it.

A backend makes writes safe where the storage root lives: a single file replaced whole (:meth:`Backend.write`)
or written in chunks and published at once (:meth:`Backend.staged`), and content files committed by a record
written last (:meth:`Backend.committing`). Which backend serves a root is chosen by its URL scheme in
:mod:`mnist_assets.storage.registry`; each backend is one module (:mod:`~mnist_assets.storage.local`,
:mod:`~mnist_assets.storage.object`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import dagster as dg
from upath import UPath

from mnist_assets.storage.records import RecordKind


@dataclass(frozen=True)
class Stored:
    """An asset's value that is already in storage: assets that stream large artifacts write them
    through their IO manager while computing (so memory does not grow with the data) and return this
    receipt, whose metadata ``handle_output`` records without writing anything."""

    metadata: dict[str, Any]


Put = Callable[[str, bytes], None]
"""Writes one named file of a commit (the content files first, the record last)."""


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


class Keeping(Protocol):
    """What a commit calls back so its record is kept as a version (``versions.Kept`` is one)."""

    def named(self) -> set[str]:
        """Content files the current record or a kept record names: a failed commit leaves them."""
        ...

    def keep(self, record: bytes) -> None:
        """Keep the record just committed as the commit's version (with the artifact's lock held)."""

    def settle(self) -> None:
        """Put every content file where it belongs now that the current record changed."""


class Backend(Protocol):
    """How artifacts are written safely on one kind of storage, and the file operations retention, rollback
    and gc need from it (:mod:`~mnist_assets.storage.versions` has no branch on the kind of storage);
    :func:`registry.backend_for` picks one by the root's URL scheme."""

    collects: bool
    """Whether ``gc`` may collect here (object storage collects in each commit, after a grace period)."""

    def write(self, path: UPath, data: bytes) -> None:
        """Replace a single-file artifact whole (a reader sees the old bytes or the new)."""

    def staged(self, path: UPath) -> contextlib.AbstractContextManager[StagedFile]:
        """A single-file artifact written in chunks, published only by ``StagedFile.commit``."""

    def committing(
        self, directory: UPath, record: RecordKind, kept: Keeping | None = None
    ) -> contextlib.AbstractContextManager[Put]:
        """A commit of content-addressed files: the caller ``put``s each file, then the record naming
        them, last. If the block fails, the previous record and every file it names stay intact.
        ``kept``: the record is also kept as that version, and files kept versions name stay."""

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        """Held while a reader opens a record and its files."""

    def lock(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        """The exclusive lock of an artifact's changes (commits, kept versions, rollback, gc)."""

    def vanished(self, directory: UPath) -> bool:
        """Whether an artifact's directory is gone (storage deleted or unmounted), so a write there must
        fail rather than be recreated by taking the lock."""

    def same(self, a: UPath, b: UPath) -> bool:
        """Whether two stored files are the same content (False if either is missing)."""

    def keep_copy(self, source: UPath, target: UPath) -> None:
        """A copy of ``source`` at ``target`` that survives ``source`` being replaced."""

    def restore(self, source: UPath, target: UPath) -> None:
        """Replace ``target`` whole with a copy of ``source`` (a rollback of a single file)."""

    def move(self, source: UPath, target: UPath, top: UPath) -> None:
        """Move a file (``top``: the directory it leaves, which stays)."""

    def delete(self, paths: Iterable[UPath], top: UPath) -> None:
        """Delete files under ``top`` (missing ones are fine)."""

    def strays(self, directory: UPath, named: set[str]) -> list[UPath]:
        """With the lock held after a commit: files under ``directory`` to drop now because nothing names
        them (none where the commit itself collects them later)."""
