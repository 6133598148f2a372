"""Read a committed split back, in batches, without holding the dataset in memory.

``load("fashion_mnist", "train", batch_size=256, seed=1, epochs=2)`` iterates ``(images, labels)``
numpy batches (images uint8 ``[B, 28, 28]``, labels int32 ``[B]``); ``.tf()`` gives the same batches,
in the same order, as a ``tf.data.Dataset`` that reads shards in parallel and prefetches.

It streams: the shard being batched and the next ``READ_AHEAD`` (``rows_per_shard`` examples each,
10,000 by default) are all it holds, so memory does not grow with the dataset. Each shard's sha256 is
checked against the manifest the first time it is read; a damaged shard is refused with the split,
the file and the repair command. The manifest and files are the ones committed when the loader opened
them; a later commit does not change what it reads (on object storage, for the grace period during
which a replaced version's files are kept: an hour by default).

Shuffling is seeded per epoch, across shards (their order) and within them (their rows): the same seed
gives the same batches, another seed others, and every example appears exactly once per epoch.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pydantic

from mnist_assets import settings
from mnist_assets.hashing import sha256
from mnist_assets.keys import label
from mnist_assets.models import BestModelRecord
from mnist_assets.shards import READ_AHEAD, SPLITS, to_numpy
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import OpenShardSet, ShardSetIOManager, damaged_shard

if TYPE_CHECKING:
    import tensorflow as tf

Batch = tuple[np.ndarray, np.ndarray]


class SplitLoader:
    """Batches of one committed split; iterate it (numpy) or call :meth:`tf` (tf.data)."""

    def __init__(
        self,
        shard_set: OpenShardSet,
        what: str,
        batch_size: int,
        seed: int | None,
        epochs: int | None,
        drop_remainder: bool,
    ):
        if batch_size < 1:
            raise ValueError(f"{what}: batch_size must be positive, got {batch_size}")
        self.shard_set, self.what = shard_set, what
        self.manifest = shard_set.manifest
        self.batch_size, self.seed, self.epochs, self.drop_remainder = (
            batch_size,
            seed,
            epochs,
            drop_remainder,
        )
        self._verified: set[str] = set()
        self._locks = {name: threading.Lock() for name in shard_set.files}

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.manifest.image_shape

    @property
    def rows(self) -> int:
        """Examples per epoch."""
        return self.manifest.rows

    @property
    def shard_count(self) -> int:
        return len(self.manifest.shards)

    def shard_order(self, epoch: int) -> np.ndarray:
        """Which shard comes when in ``epoch`` (manifest order when unshuffled)."""
        if self.seed is None:
            return np.arange(self.shard_count)
        return np.random.default_rng([self.seed, epoch]).permutation(self.shard_count)

    def read_shard(self, epoch: int, number: int) -> Batch:
        """All examples of one shard, verified on first read, in ``epoch``'s seeded row order."""
        entry = self.manifest.shards[number]
        handle = self.shard_set.files[entry.file]
        with self._locks[entry.file]:
            handle.seek(0)
            data = handle.read()
        if entry.file not in self._verified:
            if sha256(data) != entry.sha256:
                raise StorageError(damaged_shard(self.what, entry.file, self.shard_set.location))
            self._verified.add(entry.file)
        images, labels = to_numpy(pq.read_table(io.BytesIO(data)), self.manifest.image_shape)
        labels = labels.astype(np.int32)
        if self.seed is None:
            return images, labels
        rows = np.random.default_rng([self.seed, epoch, number]).permutation(len(labels))
        return images[rows], labels[rows]

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.epochs)

    def batches(self, epochs: int | None) -> Iterator[Batch]:
        """The batches of ``epochs`` epochs (None: forever); ``iter(loader)`` uses the loader's own."""
        with ThreadPoolExecutor(READ_AHEAD) as pool:
            epoch = 0
            while epochs is None or epoch < epochs:
                yield from self._batches(self._read_ahead(pool, epoch))
                epoch += 1

    def _read_ahead(self, pool: ThreadPoolExecutor, epoch: int) -> Iterator[Batch]:
        """``epoch``'s shards in order, the next ``READ_AHEAD`` read and decoded on other threads
        meanwhile (hashing, Parquet and file reads release the GIL); memory stays a few shards."""
        pending: deque[Future[Batch]] = deque()
        for number in self.shard_order(epoch):
            pending.append(pool.submit(self.read_shard, epoch, int(number)))
            if len(pending) > READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _batches(self, shards: Iterator[Batch]) -> Iterator[Batch]:
        """Fixed-size batches across shard boundaries; the rest of the epoch last (unless dropped)."""
        images = np.empty((0, *self.manifest.image_shape), np.uint8)
        labels = np.empty(0, np.int32)
        for shard_images, shard_labels in shards:
            images, labels = np.concatenate([images, shard_images]), np.concatenate([labels, shard_labels])
            full = len(labels) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield images[start : start + self.batch_size], labels[start : start + self.batch_size]
            images, labels = images[full:], labels[full:]
        if len(labels) and not self.drop_remainder:
            yield images, labels

    def tf(self, channel_axis: bool = False) -> tf.data.Dataset:
        """The same batches as iterating, as tf.data: shards read on parallel threads, prefetched.

        ``channel_axis`` gives images ``[B, 28, 28, 1]``, the layout Keras convolutions expect.
        """
        from mnist_assets import training  # TensorFlow loads only when asked for

        return training.batches_from(self, channel_axis)

    def close(self) -> None:
        self.shard_set.close()

    def __enter__(self) -> SplitLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_split(
    store: ShardSetIOManager,
    dataset: str,
    split: str,
    *,
    batch_size: int = 128,
    seed: int | None = None,
    epochs: int | None = 1,
    drop_remainder: bool = False,
) -> SplitLoader:
    """A loader over the split as ``store`` holds it now (what :func:`load` and training use)."""
    if split not in SPLITS:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    key = dg.AssetKey([dataset, "shards"])
    return SplitLoader(store.open(key, split), label(key, split), batch_size, seed, epochs, drop_remainder)


def load(
    dataset: str,
    split: str,
    *,
    batch_size: int = 128,
    seed: int | None = None,
    epochs: int | None = 1,
    drop_remainder: bool = False,
    storage: str | None = None,
) -> SplitLoader:
    """A loader over the committed ``split`` of ``dataset`` in ``storage`` (default: the configured one,
    ``MNIST_ASSETS_STORAGE`` or ``data/artifacts``). ``seed=None`` keeps the stored order; ``epochs=None``
    repeats forever. Materialize the dataset first (``mnist-assets prepare DATASET``)."""
    store = ShardSetIOManager(root=storage or settings.storage())
    return open_split(
        store, dataset, split, batch_size=batch_size, seed=seed, epochs=epochs, drop_remainder=drop_remainder
    )


def best_model_record(dataset: str, store) -> BestModelRecord:
    """``dataset``'s stored best_model record, parsed once here: a record that is not one is a storage
    fault naming its file."""
    key = dg.AssetKey([dataset, "best_model"])
    directory = store.asset_dir(key)
    try:
        return BestModelRecord.model_validate(store.read(directory, None, f"{dataset}/best_model"))
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the record"
        raise StorageError(
            f"{dataset}/best_model: {store.record_path(directory, None)} is not a best_model record "
            f"({where}: {problem['msg']}); materialize {dataset}/best_model again"
        ) from None


def load_model(dataset: str, model: str = "best", *, storage: str | None = None):
    """The ``keras.Model`` of ``dataset``'s checkpoint ``model`` (a configuration name), or of the one
    ``best_model`` promoted (``"best"``), verified against its recorded sha256. Imports TensorFlow."""
    from mnist_assets import training
    from mnist_assets.storage.io_managers import JsonRecordIOManager, KerasIOManager

    root = storage or settings.storage()
    keras_store = KerasIOManager(root=root)
    expected = None
    if model == "best":
        record = best_model_record(dataset, JsonRecordIOManager(root=root))
        model, expected = record.winner, record.checkpoint_sha256
    key = dg.AssetKey([dataset, "checkpoint"])
    stored = keras_store.read(keras_store.asset_dir(key), model, label(key, model))
    if expected is not None and stored.record.sha256 != expected:
        raise StorageError(
            f"{dataset}/best_model promotes checkpoint[{model}] {expected[:16]}, but {stored.location} is "
            f"{stored.record.sha256[:16]}: materialize {dataset}/best_model again to rank the new checkpoint"
        )
    return training.model_from_bytes(stored.keras_bytes)
