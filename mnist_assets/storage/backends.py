"""What a storage backend does for artifacts: the protocol every backend keeps, and what passes through it.

A backend makes writes safe where the storage root lives: a single file replaced whole (:meth:`Backend.write`)
or written in chunks and published at once (:meth:`Backend.staged`), and content files committed by a record
written last (:meth:`Backend.committing`). Which backend serves a root is chosen by its URL scheme in
:mod:`mnist_assets.storage.registry`; each backend is one module (:mod:`~mnist_assets.storage.local`,
:mod:`~mnist_assets.storage.object`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import dagster as dg
from upath import UPath

from mnist_assets.storage.records import RecordKind
from mnist_assets.storage.versions import Kept


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


class Backend(Protocol):
    """How artifacts are written safely on one kind of storage; :func:`registry.backend_for` picks one."""

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
