"""Which backend serves a storage root, keyed by its URL scheme: a new backend (GCS, Azure) is one module
beside :mod:`~mnist_assets.storage.local` and :mod:`~mnist_assets.storage.object` plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from upath import UPath

from mnist_assets.storage.backends import Backend
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.local import LocalBackend
from mnist_assets.storage.object import ObjectBackend

BACKENDS: dict[str, Callable[[timedelta], Backend]] = {
    "": lambda grace: LocalBackend(),
    "file": lambda grace: LocalBackend(),
    "local": lambda grace: LocalBackend(),
    "s3": ObjectBackend,
    "s3a": ObjectBackend,
}
"""URL scheme of the storage root → how to make its backend from the object-storage grace period (how long
a file no record names any more is kept for a reader still holding its record)."""


def backend_for(root: UPath, grace: timedelta) -> Backend:
    """The backend for ``root``'s scheme; a scheme with none registered is refused in one sentence."""
    make = BACKENDS.get(root.protocol)
    if make is None:
        known = ", ".join(f"{scheme}://" for scheme in sorted(BACKENDS) if scheme)
        raise StorageError(
            f"storage {root}: no backend for the {root.protocol}:// scheme; expected a local directory or "
            f"one of {known}; point MNIST_ASSETS_STORAGE at such storage or register a backend in "
            "mnist_assets/storage/registry.py"
        )
    return make(grace)
