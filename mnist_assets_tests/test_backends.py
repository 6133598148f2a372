"""One contract every storage backend keeps, run against each: the local disk and a toy backend here,
S3 on moto's server in ``deploy/test_s3_backends.py``. The toy follows the recipe for a new backend (one
class plus one registry line, ``registry.BACKENDS``) and passes the same contract as the real ones."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta

import dagster as dg
import numpy as np
import pytest
from upath import UPath

from mnist_assets.storage import registry, versions
from mnist_assets.storage.backends import Backend, Put, StagedFile
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.files import temporary_name
from mnist_assets.storage.io_managers import NumpyIOManager
from mnist_assets.storage.records import RecordKind
from mnist_assets.storage.versions import Kept
from mnist_assets_tests.faults import scenario

RECORD = RecordKind("record.json", lambda data: json.loads(data))
"""A record naming its content files with their sha256, as a shard manifest does."""


def record_of(files: dict[str, bytes]) -> bytes:
    return json.dumps({name: hashlib.sha256(data).hexdigest() for name, data in files.items()}).encode()


def commit(backend: Backend, directory: UPath, files: dict[str, bytes]) -> None:
    with backend.committing(directory, RECORD) as put:
        for name, data in files.items():
            put(name, data)
        put(RECORD.name, record_of(files))


def names(directory: UPath) -> set[str]:
    return {path.name for path in directory.iterdir()} - {".lock"}


class ToyBackend:
    """A new backend in one class: fsspec's in-memory filesystem (one process, so no lock and no
    conditional put are needed). A commit holds its files until the block ends, then writes them, the
    record last: a block that fails writes nothing."""

    def __init__(self, grace: timedelta):
        self.grace = grace

    def write(self, path: UPath, data: bytes) -> None:
        path.fs.pipe_file(path.path, data)

    @contextlib.contextmanager
    def staged(self, path: UPath) -> Iterator[StagedFile]:
        temporary = temporary_name(path)
        staged = StagedFile(path, temporary, temporary.open("wb"), lambda t, p: t.fs.mv(t.path, p.path))
        try:
            yield staged
        finally:
            staged.file.close()
            if temporary.exists():
                temporary.unlink()

    @contextlib.contextmanager
    def committing(self, directory: UPath, record: RecordKind, kept: Kept | None = None) -> Iterator[Put]:
        files: dict[str, bytes] = {}
        yield files.__setitem__
        data = files.pop(record.name)
        for name, content in files.items():
            self.write(directory / name, content)
        self.write(directory / record.name, data)

    def reading(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    collects = False

    def lock(self, directory: UPath) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def vanished(self, directory: UPath) -> bool:
        return False

    def same(self, a: UPath, b: UPath) -> bool:
        return a.exists() and b.exists() and a.read_bytes() == b.read_bytes()

    def keep_copy(self, source: UPath, target: UPath) -> None:
        source.fs.copy(source.path, target.path)

    def restore(self, source: UPath, target: UPath) -> None:
        source.fs.copy(source.path, target.path)

    def move(self, source: UPath, target: UPath, top: UPath) -> None:
        source.fs.mv(source.path, target.path)

    def delete(self, paths: Iterable[UPath], top: UPath) -> None:
        for path in paths:
            if path.exists():
                path.unlink()

    def strays(self, directory: UPath, named: set[str]) -> list[UPath]:
        return []


class BackendContract:
    """What retention and the IO managers rely on from a backend; a subclass supplies ``root``."""

    @pytest.fixture
    def backend(self, root: UPath) -> Backend:
        return registry.backend_for(root, timedelta(0))

    def test_a_write_replaces_the_file_whole(self, backend, root):
        path = root / "idx" / "x.npy"
        backend.write(path, b"first")
        backend.write(path, b"second")
        assert path.read_bytes() == b"second"
        assert names(path.parent) == {"x.npy"}  # no temporary file left beside it

    def test_a_staged_file_appears_only_on_commit(self, backend, root):
        path = root / "raw" / "x.gz"
        with backend.staged(path) as staged:
            staged.file.write(b"chunk one, ")
            staged.file.write(b"chunk two")
            assert not path.exists()
            receipt = staged.commit()
        assert path.read_bytes() == b"chunk one, chunk two"
        assert receipt.metadata["bytes"] == len(b"chunk one, chunk two")

    def test_a_staged_file_never_committed_keeps_the_previous_one(self, backend, root):
        path = root / "raw" / "x.gz"
        backend.write(path, b"previous")
        with pytest.raises(RuntimeError), backend.staged(path) as staged:
            staged.file.write(b"half of the next")
            raise RuntimeError("the download broke")
        assert path.read_bytes() == b"previous"
        assert names(path.parent) == {"x.gz"}

    def test_a_commit_makes_the_record_and_every_file_it_names_readable(self, backend, root):
        directory = root / "shards" / "train"
        files = {"part-a.parquet": b"rows a", "part-b.parquet": b"rows b"}
        commit(backend, directory, files)
        with backend.reading(directory):
            named = RECORD.digests((directory / RECORD.name).read_bytes())
            assert {name: (directory / name).read_bytes() for name in named} == files

    def test_a_failed_commit_keeps_the_previous_record_and_its_files(self, backend, root):
        directory = root / "shards" / "train"
        commit(backend, directory, {"part-a.parquet": b"rows a"})
        with pytest.raises(RuntimeError), backend.committing(directory, RECORD) as put:
            put("part-b.parquet", b"rows b")
            raise RuntimeError("the writer died before its record")
        assert (directory / RECORD.name).read_bytes() == record_of({"part-a.parquet": b"rows a"})
        assert (directory / "part-a.parquet").read_bytes() == b"rows a"

    def test_a_second_commit_replaces_the_record(self, backend, root):
        directory = root / "shards" / "train"
        commit(backend, directory, {"part-a.parquet": b"rows a"})
        commit(backend, directory, {"part-b.parquet": b"rows b"})
        assert set(RECORD.digests((directory / RECORD.name).read_bytes())) == {"part-b.parquet"}
        assert (directory / "part-b.parquet").read_bytes() == b"rows b"

    def test_a_kept_copy_survives_its_file_being_replaced_and_restores_it(self, backend, root):
        path, kept = root / "idx" / "x.npy", root / "_versions" / "idx" / "x" / "v1.npy"
        backend.write(path, b"version one")
        with backend.lock(kept.parent):
            backend.keep_copy(path, kept)
        assert backend.same(path, kept)
        backend.write(path, b"version two")
        assert kept.read_bytes() == b"version one"
        assert not backend.same(path, kept)
        backend.restore(kept, path)
        assert path.read_bytes() == b"version one"
        assert backend.same(path, kept)
        assert not backend.same(path, root / "idx" / "missing.npy")

    def test_a_moved_file_is_at_its_target(self, backend, root):
        source, target = (
            root / "shards" / "train" / "part-a.parquet",
            root / "_versions" / "files" / "part-a.parquet",
        )
        backend.write(source, b"rows a")
        backend.move(source, target, source.parent)
        assert target.read_bytes() == b"rows a"

    def test_delete_removes_the_files_named_and_no_others(self, backend, root):
        directory = root / "checkpoint"
        for name in ("model-a.keras", "model-b.keras"):
            backend.write(directory / name, name.encode())
        backend.delete([directory / "model-a.keras", directory / "never-written.keras"], directory)
        assert not (directory / "model-a.keras").exists()
        assert (directory / "model-b.keras").read_bytes() == b"model-b.keras"


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def root(self, tmp_path) -> UPath:
        return UPath(tmp_path)


class TestToyBackend(BackendContract):
    """The recipe for a new backend, followed: the class above plus one registry line."""

    @pytest.fixture
    def root(self, monkeypatch) -> Iterator[UPath]:
        monkeypatch.setitem(registry.BACKENDS, "memory", ToyBackend)
        root = UPath(f"memory://toy-{uuid.uuid4().hex}/artifacts")
        yield root
        if root.exists():  # the in-memory filesystem lives as long as the process
            root.fs.rm(root.path, recursive=True)

    def test_the_registry_serves_the_toy_for_its_scheme(self, backend):
        assert isinstance(backend, ToyBackend)

    def test_kept_versions_and_rollback_work_over_the_toy(self, root):
        """Retention and rollback know the storage only through its backend: a new one needs no edit there."""
        store, key = NumpyIOManager(root=str(root)), dg.AssetKey(["toy", "idx"])
        for value in (np.arange(3), np.arange(4)):
            store.store(store.asset_dir(key), "x", value)
        artifact = store.artifact(key, "x")
        first, second = artifact.versions()
        assert artifact.current_version() == second
        versions.rollback(artifact, first)
        assert artifact.current_version() == first
        assert store.read(store.asset_dir(key), "x", "toy/idx[x]").tolist() == [0, 1, 2]


@scenario(
    "Files",
    "MNIST_ASSETS_STORAGE with a URL scheme no backend serves (e.g. gs:// today)",
    "One line naming the storage URL, its scheme, the schemes served and what to do",
    "Everything: nothing is written",
)
def test_a_scheme_without_a_backend_is_refused_in_one_sentence():
    with pytest.raises(StorageError) as refused:
        registry.backend_for(UPath("gs://bucket/artifacts"), timedelta(0))
    assert str(refused.value) == (
        "storage gs://bucket/artifacts: no backend for the gs:// scheme; expected a local directory or one "
        "of file://, local://, s3://, s3a://; point MNIST_ASSETS_STORAGE at such storage or register a "
        "backend in mnist_assets/storage/registry.py"
    )
