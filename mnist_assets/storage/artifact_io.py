"""What every Dagster IO manager of artifacts shares: the layout under the storage root, partitions, versions.

Every IO manager stores under ``root`` (a local directory or a URL whose scheme has a backend,
through universal-pathlib) at ``root/<dataset>/<asset>/...``, one file (or directory) per partition. A
run materializes one partition (so each gets its own content data version); a partitioned upstream
arrives as ``{partition_key: value}`` with every partition the downstream partition depends on.

Writes are atomic, made safe by the root's backend (:mod:`mnist_assets.storage.registry`). Multi-file
artifacts (shard sets, checkpoints) are content-addressed files committed by a small JSON record
written last; until the record is replaced, the previous record and every file it names stay intact;
then those move to the kept versions (:func:`versions.settle`), so the directory holds exactly the
current files.

Large artifacts stream, so memory does not grow with the dataset: a download and an idx array are
written in chunks to a staged file (:meth:`ArtifactIOManager.staged`) and loaded memory-mapped; a shard
set is committed one Parquet file at a time (:meth:`ShardSetIOManager.commit`). Those assets write
through their IO manager while they compute and return a :class:`Stored` receipt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, ClassVar

import dagster as dg
from upath import UPath

from mnist_assets.keys import label
from mnist_assets.settings import DEFAULT_KEEP, DEFAULT_LEASE_SECONDS, DEFAULT_STORAGE
from mnist_assets.storage import versions
from mnist_assets.storage.backends import Backend, StagedFile, Stored
from mnist_assets.storage.faults import StorageError, ensure_room, plainly, safe_name
from mnist_assets.storage.records import RecordKind
from mnist_assets.storage.registry import backend_for
from mnist_assets.storage.versions import Artifact, Kept, new_id


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Shared layout and partition handling; subclasses say how one value becomes bytes."""

    root: str = DEFAULT_STORAGE
    grace_seconds: float = 3600.0
    """On object storage, how long a file no record names any more is kept: a reader that opened the
    record it belonged to has this long to finish (see :class:`ObjectBackend`)."""
    keep_versions: int = DEFAULT_KEEP
    """How many committed versions of each artifact partition stay for rollback (see
    :mod:`mnist_assets.storage.versions`), besides the current one."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a partition's lease lasts unless renewed (see :mod:`mnist_assets.storage.leases`)."""
    record_kind: ClassVar[RecordKind | None] = None
    """The record that commits a multi-file artifact; None for single-file artifacts."""

    def backend(self) -> Backend:
        """How commits are made safe where ``root`` lives (chosen once, by its URL)."""
        return backend_for(UPath(self.root), timedelta(seconds=self.grace_seconds))

    def artifact(self, asset_key: dg.AssetKey, partition: str | None) -> Artifact:
        """One partition's current file (or record) and kept versions, as :mod:`versions` sees them."""
        return self.artifact_at(self.location(asset_key, partition))

    def new_version(self, record_path: UPath) -> Kept:
        """The version a commit of this record is about to be kept as."""
        return Kept(self.artifact_at(record_path), new_id())

    def artifact_at(self, current: UPath) -> Artifact:
        current, root = UPath(current), UPath(self.root)
        relative = current.parent.path[len(root.path.rstrip("/")) + 1 :]
        kept_dir = root / versions.VERSIONS / relative
        if self.record_kind is None:
            kept_dir = kept_dir / current.stem
        return Artifact(
            current=current,
            kept_dir=kept_dir,
            keep=max(self.keep_versions, 1),
            record=self.record_kind,
            backend=self.backend(),
        )

    def asset_dir(self, asset_key: dg.AssetKey) -> UPath:
        return UPath(self.root).joinpath(*(safe_name(part) for part in asset_key.path))

    def record_path(self, directory: UPath, partition: str | None) -> UPath:
        """The file whose presence means the artifact exists (written last)."""
        raise NotImplementedError

    def location(self, asset_key: dg.AssetKey, partition: str | None) -> UPath:
        directory = self.asset_dir(asset_key)
        return self.record_path(directory, None if partition is None else safe_name(partition))

    def exists(self, asset_key: dg.AssetKey, partition: str | None) -> bool:
        """Cheap: the artifact's files are present (with their recorded sizes, where recorded)."""
        return self.location(asset_key, partition).exists()

    def verify(self, asset_key: dg.AssetKey, partition: str | None) -> str | None:
        """Thorough: load and check the artifact; the problem, or None when it is intact."""
        directory, partition = self.asset_dir(asset_key), None if partition is None else safe_name(partition)
        try:
            self.read(directory, partition, asset_key.to_user_string())
        except (StorageError, ValueError, OSError) as error:
            return str(error)
        return None

    @contextlib.contextmanager
    def staged(
        self, asset_key: dg.AssetKey, partition: str | None, expected_bytes: int | None = None
    ) -> Iterator[StagedFile]:
        """The partition's file to write in chunks (``staged.file``), for single-file artifacts: it
        replaces the stored file only on ``staged.commit()``, and is removed if the block ends without
        it (a refused or failed write keeps the previous artifact), and kept as a version when it is. With
        ``expected_bytes``, a local disk without room for them refuses before the first byte
        (:func:`ensure_room`)."""
        artifact = self.artifact(asset_key, partition)
        with plainly("write", label(asset_key, partition), artifact.current):
            ensure_room(artifact.current, expected_bytes)
            with self.backend().staged(artifact.current) as staged:
                publish = staged.publish

                def publish_kept(temporary: UPath, path: UPath) -> None:
                    kept = versions.keep_file(artifact, lambda: publish(temporary, path))
                    staged.metadata["version"] = kept

                staged.publish = publish_kept
                yield staged

    # one value <-> storage, per partition (partition None for unpartitioned assets)
    def store(self, directory: UPath, partition: str | None, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, directory: UPath, partition: str | None, what: str) -> Any:
        raise NotImplementedError

    def write_file(self, directory: UPath, partition: str | None, data: bytes) -> dict[str, Any]:
        """Replace a single-file artifact whole and keep it as a version; its metadata."""
        path = self.record_path(directory, partition)
        version = versions.keep_file(self.artifact_at(path), lambda: self.backend().write(path, data))
        return {"path": dg.MetadataValue.path(str(path)), "bytes": len(data), "version": version}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if isinstance(obj, Stored):
            context.add_output_metadata(obj.metadata)
            return
        partition = safe_name(context.asset_partition_key) if context.has_asset_partitions else None
        path = self.location(context.asset_key, partition)
        with plainly("write", label(context.asset_key, partition), path):
            context.add_output_metadata(self.store(self.asset_dir(context.asset_key), partition, obj))

    def load_input(self, context: dg.InputContext) -> Any:
        if not context.has_asset_partitions:
            return self._load(context.asset_key, None)
        return {key: self._load(context.asset_key, safe_name(key)) for key in context.asset_partition_keys}

    def _load(self, asset_key: dg.AssetKey, partition: str | None) -> Any:
        what = label(asset_key, partition)
        with plainly("read", what, self.location(asset_key, partition)):
            return self.read(self.asset_dir(asset_key), partition, what)
