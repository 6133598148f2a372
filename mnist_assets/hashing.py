"""Content hashes: the project's sha256, and the code and data versions Dagster's versioning is built on.

Code versions hash the source text of the code that computes an asset, so editing it makes the asset
stale without anyone bumping a string. Data versions hash content, so an identical result leaves
everything downstream fresh. Files, shards and checkpoints are checked by their sha256, written as 64
lowercase hex digits; :func:`sha256` and :func:`file_sha256` are the one way to compute it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
from pathlib import Path
from typing import Any, BinaryIO


def code_version(*objects: Any) -> str:
    """A stable hash of the source of functions, classes or modules (not Python's salted hash()).

    A module may be named by its dotted name, so hashing it does not import it (TensorFlow); a dict
    stands for settings that change the result, hashed as JSON.
    """
    digest = hashlib.sha256()
    for obj in objects:
        if isinstance(obj, dict):
            source = json.dumps(obj, sort_keys=True)
        elif isinstance(obj, str):
            spec = importlib.util.find_spec(obj)
            if spec is None or spec.origin is None:
                raise ValueError(f"code_version: module {obj!r} has no source file to hash")
            source = Path(spec.origin).read_text()
        else:
            source = inspect.getsource(obj)
        digest.update(source.encode())
    return digest.hexdigest()[:16]


def json_version(value: Any) -> str:
    """A hash of a JSON-able value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def sha256(data: bytes) -> str:
    """The sha256 of ``data``, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(file: BinaryIO) -> str:
    """The sha256 of an open binary file from its current position, read in 1 MiB chunks (never whole)."""
    digest = hashlib.sha256()
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
