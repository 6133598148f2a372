"""Local and remote file helpers every storage module shares: which paths are local, the temporary-name
pattern, a file's sha256 and the whole-file write. One place each, so a backend, the kept versions and the
leases agree on what a temporary file looks like and how a file is replaced whole."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from upath import UPath

LOCAL_PROTOCOLS = ("", "file", "local")


def is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def temporary_name(path: UPath) -> UPath:
    """A fresh hidden name beside ``path`` to write it under before it is renamed into place."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def is_temporary(path: UPath) -> bool:
    """Whether ``path`` has the shape :func:`temporary_name` gives (a writer's, perhaps one that died)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def write_atomic(path: UPath, data: bytes) -> None:
    """Write ``path`` whole, so a reader sees the old bytes or the new: locally a temporary file renamed
    into place, on object storage one put (an object appears only once its upload completed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.fs.pipe_file(path.path, data)
        return
    temporary = temporary_name(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary.path, path.path)
    finally:  # a full disk must not keep the half-written copy (issue 16)
        temporary.unlink(missing_ok=True)


def file_sha256(file: UPath | BinaryIO) -> str:
    """The sha256 of a file (a path, or an open file read from its start), read in 1 MiB chunks."""
    if isinstance(file, UPath):
        with file.open("rb") as handle:
            return file_sha256(handle)
    digest = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def files_under(directory: UPath) -> Iterator[UPath]:
    """Every file under ``directory`` except lock files, subdirectories included."""
    if not directory.exists():
        return
    for path in directory.iterdir():
        if path.is_dir():
            yield from files_under(path)
        elif path.name != ".lock":
            yield path


def relative(path: UPath, directory: UPath) -> str:
    return path.path[len(directory.path.rstrip("/")) + 1 :]


def within(path: UPath, directory: UPath) -> bool:
    return path.path.startswith(directory.path.rstrip("/") + "/")


def unnamed(directory: UPath, named: set[str]) -> list[UPath]:
    """With the artifact's lock held: the files under ``directory`` to drop, those not ``named`` and
    temporary files of writers that died (hidden files such as ``.lock`` stay)."""
    return [
        p
        for p in files_under(directory)
        if is_temporary(p) or not (p.name.startswith(".") or relative(p, directory) in named)
    ]
