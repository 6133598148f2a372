"""Dagster's IO managers, one per artifact kind: a path under the storage root plus (de)serialisation.

Single files (``.gz`` downloads, ``.npy`` arrays, ``.json`` records) are replaced whole; Parquet shard sets
(``_manifest.json``) and Keras checkpoints (``checkpoint.json``) are content-addressed files committed by
their record, written last (see :mod:`mnist_assets.storage.artifact_io` for what they share)."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import dagster as dg
import numpy as np
from upath import UPath

from mnist_assets.hashing import sha256
from mnist_assets.keys import label
from mnist_assets.manifest import CheckpointRecord, Manifest, TrainedCheckpoint
from mnist_assets.settings import DEFAULT_KEEP, DEFAULT_LEASE_SECONDS
from mnist_assets.shards import EncodedShardSet, ShardSet, decode
from mnist_assets.storage import versions
from mnist_assets.storage.artifact_io import ArtifactIOManager
from mnist_assets.storage.backends import Backend, Put, Stored
from mnist_assets.storage.faults import (
    REPAIR,
    StorageError,
    missing,
    plainly,
    read_stored,
    safe_name,
    safe_relative,
)
from mnist_assets.storage.files import file_sha256, is_local
from mnist_assets.storage.records import CHECKPOINT, MANIFEST, RecordKind
from mnist_assets.storage.versions import Kept, VersionError
from mnist_assets.tags import ROW_COUNT


class GzipIOManager(ArtifactIOManager):
    """Raw downloads, kept byte-for-byte as fetched. A download streams into a :meth:`staged` file,
    committed once its content verified, so memory does not grow with the file. Loaded memory-mapped
    from local storage (a read-only ``mmap``, used like ``bytes``), so the idx step does not hold the
    file; other fsspec storage reads it into memory."""

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        return directory / f"{partition or 'value'}.gz"

    def store(self, directory, partition, value: bytes):
        return self.write_file(directory, partition, value)

    def read(self, directory, partition, what) -> bytes | mmap.mmap:
        path = self.record_path(directory, partition)
        if not is_local(path):
            return read_stored(path, what)
        try:
            with open(str(path), "rb") as file:
                if os.fstat(file.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise StorageError(missing(path, what)) from None


class NumpyIOManager(ArtifactIOManager):
    """Arrays as ``.npy``; loading never unpickles (object arrays are refused).

    Large arrays are written in chunks through :meth:`staged` and loaded memory-mapped from local
    storage, so neither direction holds a whole array in memory. Other fsspec storage has no memory
    maps: there a load reads the whole file into memory.
    """

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        return directory / f"{partition or 'value'}.npy"

    def store(self, directory, partition, value: np.ndarray):
        if value.dtype.hasobject:
            raise StorageError("object arrays cannot be stored without pickle")
        sink = io.BytesIO()
        np.save(sink, value, allow_pickle=False)
        return self.write_file(directory, partition, sink.getvalue())

    def read(self, directory, partition, what):
        path = self.record_path(directory, partition)
        try:
            if is_local(path):  # memory-mapped: pages are read when used, never the whole file at once
                return np.load(str(path), mmap_mode="r", allow_pickle=False)
            return np.load(io.BytesIO(read_stored(path, what)), allow_pickle=False)
        except FileNotFoundError:
            raise StorageError(missing(path, what)) from None
        except ValueError as error:
            raise StorageError(
                f"{what}: {path} is not a plain .npy array ({error}); .npy artifacts are read with "
                "allow_pickle=False, so object arrays are refused"
            ) from error


class JsonRecordIOManager(ArtifactIOManager):
    """Small typed records (a pydantic model, e.g. best_model's choice) as ``record.json`` (or
    ``<partition>.json``), replaced whole and kept as versions like any single file; loaded as the
    parsed JSON."""

    def record_path(self, directory, partition):
        return directory / f"{partition or 'record'}.json"

    def store(self, directory, partition, value):
        return self.write_file(directory, partition, value.model_dump_json(indent=2).encode())

    def read(self, directory, partition, what) -> Any:
        import json

        path = self.record_path(directory, partition)
        try:
            return json.loads(read_stored(path, what))
        except ValueError as error:
            raise StorageError(f"{what}: {path} is not valid JSON ({error}); {REPAIR}") from error


def commit_files(
    store: Backend, directory: UPath, files: Mapping[str, bytes], record: RecordKind, data: bytes, kept: Kept
) -> str:
    """Write content-addressed files, then the record naming them (see :meth:`Backend.committing`); the
    version it is kept as."""
    with store.committing(directory, record, kept) as put:
        for name, content in files.items():
            put(name, content)
        put(record.name, data)
    return kept.version


def _all_present(directory: UPath, sizes: Mapping[str, int | None]) -> bool:
    """Every named file exists with its recorded size (``None``: size not recorded)."""
    try:
        return all(size in (None, (directory / safe_name(n)).stat().st_size) for n, size in sizes.items())
    except (FileNotFoundError, StorageError):
        return False


class ShardSetIOManager(ArtifactIOManager):
    """Parquet shard sets under ``<split>/``, committed by ``_manifest.json``; verified on every load."""

    record_kind = MANIFEST

    def record_path(self, directory, partition):
        return directory / (partition or "all") / "_manifest.json"

    def store(self, directory, partition, value: EncodedShardSet):
        split_dir = directory / (partition or "all")
        manifest, kept = value.manifest, self.new_version(split_dir / MANIFEST.name)
        commit_files(self.backend(), split_dir, value.files, MANIFEST, manifest.to_json().encode(), kept)
        return {**self._metadata(directory, partition, manifest), "version": kept.version}

    def commit(self, asset_key: dg.AssetKey, split: str, write: Callable[[Put], Manifest]) -> Stored:
        """Commit a shard set produced one file at a time: ``write(put)`` puts each Parquet file as it
        is encoded and returns the manifest naming them, which is written last. The split's directory is
        locked throughout, so a concurrent writer waits (one wins whole) and so does a reader opening
        the split; what was committed before stays readable until the manifest is replaced."""
        directory, what = self.asset_dir(asset_key), label(asset_key, split)
        split_dir = directory / safe_name(split)
        kept = self.new_version(split_dir / MANIFEST.name)

        def put_plainly(name: str, data: bytes) -> None:  # at the failing file: bytes needed, free now
            with plainly("write", what, split_dir / name, needed=len(data)):
                put(name, data)

        with plainly("write", what, split_dir), self.backend().committing(split_dir, MANIFEST, kept) as put:
            manifest = write(put_plainly)
            put_plainly(MANIFEST.name, manifest.to_json().encode())
        return Stored({**self._metadata(directory, split, manifest), "version": kept.version})

    def _metadata(self, directory: UPath, partition: str | None, manifest: Manifest) -> dict[str, Any]:
        return {
            "path": dg.MetadataValue.path(str(directory / (partition or "all") / "_manifest.json")),
            ROW_COUNT: manifest.rows,
            "shards": len(manifest.shards),
            "bytes": sum(s.bytes for s in manifest.shards),
            "root_sha256": manifest.root_sha256,
        }

    def exists(self, asset_key, partition):
        record = self.location(asset_key, partition)
        try:
            manifest = Manifest.from_json(record.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return _all_present(record.parent, {s.file: s.bytes for s in manifest.shards})

    def verify(self, asset_key: dg.AssetKey, partition: str | None) -> str | None:
        """Every shard's bytes against the manifest, one file at a time: memory stays one chunk."""
        try:
            shard_set = self.open(asset_key, partition or "all")
        except (StorageError, ValueError, OSError) as error:
            return str(error)
        what = f"{asset_key.to_user_string()}[{partition or 'all'}]"
        with contextlib.closing(shard_set):
            for entry in shard_set.manifest.shards:
                if file_sha256(shard_set.files[entry.file]) != entry.sha256:
                    return damaged_shard(what, entry.file, shard_set.location)
        return None

    def open(self, asset_key: dg.AssetKey, split: str) -> OpenShardSet:
        """The current manifest of ``split`` with every shard file opened, not yet read or verified."""
        split_dir = self.asset_dir(asset_key) / safe_name(split)
        what = label(asset_key, split)
        with self.backend().reading(split_dir):
            manifest = _read_manifest(split_dir, what)
            files: dict[str, BinaryIO] = {}
            try:
                for shard in manifest.shards:
                    files[shard.file] = (split_dir / safe_name(shard.file)).open("rb")
            except FileNotFoundError as error:
                OpenShardSet(manifest, files, str(split_dir)).close()
                raise StorageError(f"{what}: {error.filename} is missing; {REPAIR}") from None
        return OpenShardSet(manifest, files, str(split_dir))

    def read(self, directory, partition, what):
        split_dir = directory / (partition or "all")
        with self.backend().reading(split_dir):
            manifest = _read_manifest(split_dir, what)
            files = {s.file: read_stored(split_dir / s.file, what) for s in manifest.shards}
        try:
            return ShardSet(manifest, decode(manifest, files))
        except ValueError as error:
            raise StorageError(f"{what}: {split_dir} is damaged ({error}); {REPAIR}") from error


def _read_manifest(split_dir: UPath, what: str) -> Manifest:
    try:
        return Manifest.from_json(read_stored(split_dir / "_manifest.json", what))
    except ValueError as error:
        raise StorageError(
            f"{what}: {split_dir / '_manifest.json'} is invalid ({error}); {REPAIR}"
        ) from error


def damaged_shard(what: str, file: str, location: str) -> str:
    return f"{what}: shard {file} in {location} does not match its manifest sha256; {REPAIR}"


@dataclass(frozen=True)
class OpenShardSet:
    """A committed shard set whose files are open: a commit that replaces it later cannot take them
    away from this reader (locally an open file outlives its name; on object storage a replaced
    record's files are kept for the grace period), so a stream never sees files vanish."""

    manifest: Manifest
    files: dict[str, BinaryIO]
    location: str

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


@dataclass(frozen=True)
class StoredCheckpoint:
    """A verified ``.keras`` file and the record it was committed with."""

    keras_bytes: bytes
    record: CheckpointRecord
    location: str


class KerasIOManager(ArtifactIOManager):
    """Keras checkpoints as ``model-<sha>.keras`` committed by ``checkpoint.json``, with the training
    run's TensorBoard logs under ``tensorboard/<the model's sha16>/`` named by the record, so a kept
    version keeps its logs (with its model, under ``_versions/``) and ``tensorboard --logdir <root>``
    shows every run."""

    record_kind = CHECKPOINT

    def record_path(self, directory, partition):
        return (directory if partition is None else directory / partition) / "checkpoint.json"

    def store(self, directory, partition, value):
        keras_bytes = value.keras_bytes
        digest = sha256(keras_bytes)
        if committed := self.committed_as(directory if partition is None else directory / partition, digest):
            return committed
        name, logs_dir = f"model-{digest[:16]}.keras", _logs_dir(digest)
        logs = {
            f"{logs_dir}/{safe_relative(path)}": data for path, data in getattr(value, "logs", {}).items()
        }
        trained = value.record
        if not isinstance(trained, TrainedCheckpoint):  # the checkpoint asset adds what it trained from
            raise TypeError(f"a checkpoint is stored with a TrainedCheckpoint record, not {type(trained)}")
        record = CheckpointRecord(
            **dict(trained), file=name, sha256=digest, bytes=len(keras_bytes), logs=tuple(sorted(logs))
        )
        target = directory if partition is None else directory / partition
        data = record.model_dump_json(indent=2).encode()
        kept = self.new_version(target / CHECKPOINT.name)
        commit_files(self.backend(), target, {name: keras_bytes, **logs}, CHECKPOINT, data, kept)
        return {**_checkpoint_metadata(target, record), "version": kept.version}

    def committed_as(self, target: UPath, digest: str) -> dict[str, Any] | None:
        """When a kept version already holds this very ``.keras`` file (a retrain that reproduced the
        model: the file is written canonically, so to the byte), that version made current again, with
        its record and logs, and its metadata; None when the model is new here. Committing it again
        would keep a second version of the same model and push a real one out of those kept."""
        artifact = self.artifact_at(target / CHECKPOINT.name)
        same = [v for v in artifact.versions() if _model_sha256(artifact.path_of(v)) == digest]
        if not same:
            return None
        version = same[-1]
        try:
            if version != artifact.current_version():
                versions.rollback(artifact, version)  # verifies its files first
            elif versions.verify(artifact, version):
                return None  # a file of it is damaged or gone: committed afresh
            record = CheckpointRecord.model_validate_json(artifact.current.read_bytes())
        except (VersionError, ValueError, OSError):
            return None
        return {**_checkpoint_metadata(target, record), "version": version}

    def exists(self, asset_key, partition):
        record_path = self.location(asset_key, partition)
        try:
            record = CheckpointRecord.model_validate_json(record_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return _all_present(record_path.parent, {record.file: record.bytes})

    def read(self, directory, partition, what):
        target = directory if partition is None else directory / partition
        with self.backend().reading(target):
            try:
                record = CheckpointRecord.model_validate_json(read_stored(target / "checkpoint.json", what))
                path = target / safe_name(record.file)
            except ValueError as error:
                raise StorageError(
                    f"{what}: {target / 'checkpoint.json'} is invalid ({error}); {REPAIR}"
                ) from error
            keras_bytes = read_stored(path, what)
        if sha256(keras_bytes) != record.sha256:
            raise StorageError(f"{what}: {path} does not match its recorded sha256; {REPAIR}")
        return StoredCheckpoint(keras_bytes, record, str(path))


def _model_sha256(record_path: UPath) -> str | None:
    """The sha256 of the model a checkpoint record names (None: unreadable)."""
    try:
        return CheckpointRecord.model_validate_json(record_path.read_bytes()).sha256
    except (ValueError, OSError):
        return None


def _logs_dir(digest: str) -> str:
    """Where a checkpoint's TensorBoard logs go, beside its model: named by the model's sha256."""
    return f"tensorboard/{digest[:16]}"


def _checkpoint_metadata(target: UPath, record: CheckpointRecord) -> dict[str, Any]:
    metadata = {"path": dg.MetadataValue.path(str(target / record.file)), "bytes": record.bytes}
    if record.logs:
        metadata["tensorboard"] = dg.MetadataValue.path(str(target / _logs_dir(record.sha256)))
    return metadata


def io_managers(
    root: str, keep_versions: int = DEFAULT_KEEP, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> dict[str, ArtifactIOManager]:
    """The resource map the definitions bind, one IO manager per artifact kind."""
    kinds: dict[str, type[ArtifactIOManager]] = {
        "gzip_io_manager": GzipIOManager,
        "npy_io_manager": NumpyIOManager,
        "shards_io_manager": ShardSetIOManager,
        "keras_io_manager": KerasIOManager,
        "json_io_manager": JsonRecordIOManager,
    }
    return {
        name: kind(root=root, keep_versions=keep_versions, lease_seconds=lease_seconds)
        for name, kind in kinds.items()
    }
