"""Training and evaluating the CNN: the only module that imports TensorFlow.

Import it inside asset bodies, never at module level elsewhere, so loading the definitions stays fast.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mnist_assets import model_file
from mnist_assets.hyperparameters import Hyperparameters
from mnist_assets.manifest import Split, TrainingRecord
from mnist_assets.quiet import tensorflow_import
from mnist_assets.shards import READ_AHEAD

# TensorFlow's C++ start-up lines stay hidden unless MNIST_ASSETS_VERBOSE=1 or TF_CPP_MIN_LOG_LEVEL says
# otherwise (mnist_assets.quiet); this must be the first import of TensorFlow in the process.
with tensorflow_import():
    import keras
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2


PROGRESS_SECONDS = 10.0
"""Within an epoch, training logs its progress at most this often (and at every epoch's end)."""
MISTAKES_KEPT = 16
"""How many of the most confident holdout mistakes a trained model keeps to show."""
DETERMINISTIC_OPS = False
"""Whether training runs TensorFlow's deterministic kernels (``enable_op_determinism``, for the whole
process). Off: on these 2 CPU cores the default kernels already give the same model to the byte in
every process (same shards, settings, code, thread count), while the deterministic ones cost ~40 % of
training time on a lightly loaded machine (``benchmarks/determinism.py``: 300 steps of ``cnn``, median
58.9 s off, 83.3 s on; they also give other, equally reproducible, weights). What they would add is a
promise: TensorFlow refuses an op it cannot run deterministically, which matters on a GPU. Neither
mode makes the weights independent of the thread count (1 intra/inter-op thread instead of 2 trains
other weights, on or off), so another machine may train another model."""


@dataclass(frozen=True)
class HoldoutPredictions:
    """What the checkpoint's pictures need from the model's predictions on holdout, gathered in one
    pass of batches (memory: the matrix and ``MISTAKES_KEPT`` images, whatever the split's size)."""

    confusion: np.ndarray
    """Counts, ``[true class, predicted class]``."""
    mistake_images: np.ndarray
    mistake_labels: np.ndarray
    mistake_predictions: np.ndarray
    mistake_confidence: np.ndarray
    """The predicted class's probability, highest first (ties: holdout order)."""


@dataclass(frozen=True)
class TrainedModel:
    keras_bytes: bytes
    record: TrainingRecord
    """A :class:`~mnist_assets.manifest.TrainedCheckpoint` once the checkpoint asset adds what it was
    trained from."""
    history: dict[str, list[float]] = field(default_factory=dict)
    holdout: HoldoutPredictions | None = None
    logs: dict[str, bytes] = field(default_factory=dict)


def build_model(
    image_shape: tuple[int, int], num_classes: int, params: Hyperparameters, steps_per_epoch: int
) -> keras.Model:
    layers = [keras.Input((*image_shape, 1)), keras.layers.Rescaling(1 / 255)]
    for filters in params.conv_filters:
        layers.append(keras.layers.Conv2D(filters, 3, padding="same", use_bias=not params.batch_norm))
        if params.batch_norm:
            layers.append(keras.layers.BatchNormalization(momentum=0.9))
        layers += [keras.layers.ReLU(), keras.layers.MaxPooling2D()]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(params.dropout),
        keras.layers.Dense(params.dense_units, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    # cosine decay to zero: the last epochs settle instead of jittering around a minimum
    schedule = keras.optimizers.schedules.CosineDecay(
        params.learning_rate, decay_steps=max(1, params.epochs * steps_per_epoch)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _batches_per_epoch(split: ShardSource) -> int:
    return -(-split.rows // split.batch_size)  # the loader's last batch of an epoch may be partial


def evaluate(model: keras.Model, split: ShardSource) -> dict[str, float]:
    """Loss and accuracy over one pass of ``split``."""
    batches = batches_from(split, channel_axis=True, one_pass=True)
    # Keras warns that a dataset of unknown length "ran out of data" unless told how long it is
    loss, accuracy = model.evaluate(batches, steps=_batches_per_epoch(split), verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}


def train(
    splits: Mapping[Split, ShardSource], num_classes: int, params: Hyperparameters, log=None
) -> TrainedModel:
    """Fit on train, validate on test each epoch, evaluate every split once at the end, and keep the
    holdout predictions the checkpoint's pictures show (:func:`predict_holdout`).

    Every split streams from its shards (one epoch of ``train`` per Keras epoch, reshuffled by the
    loader's seed), so memory does not grow with the dataset. ``train`` and ``test`` must repeat
    forever (Keras reads a fixed number of batches from them each epoch).

    The same splits and ``params`` give the same model, to the byte, whether the process trained
    before or not: Keras numbers the layers it names per process (``dense``, then ``dense_1``), and
    the names are in the model's config and weight paths, so the count starts afresh here."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(params.seed)
    if DETERMINISTIC_OPS:
        tf.config.experimental.enable_op_determinism()
    train_split, test_split = splits["train"], splits["test"]
    steps_per_epoch = _batches_per_epoch(train_split)
    model = build_model(train_split.image_shape, num_classes, params, steps_per_epoch)

    progress = [] if log is None else [ProgressLog(log, params.epochs, steps_per_epoch)]
    with tempfile.TemporaryDirectory(prefix="mnist-assets-tensorboard-") as logs_dir:
        started = time.perf_counter()
        history = model.fit(
            batches_from(train_split, channel_axis=True),
            validation_data=batches_from(test_split, channel_axis=True),
            epochs=params.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_steps=_batches_per_epoch(test_split),
            shuffle=False,  # the train loader shuffles, seeded, across and within shards
            verbose=0,
            callbacks=[*progress, TensorBoardScalars(logs_dir)],
        )
        training_seconds = time.perf_counter() - started
        logs = files_under(logs_dir)
    metrics: dict[str, dict[str, float]] = {name: evaluate(model, split) for name, split in splits.items()}
    holdout = predict_holdout(model, splits["holdout"], num_classes)
    keras_bytes = model_to_bytes(model)
    record = TrainingRecord(
        metrics=metrics,
        epochs=params.epochs,
        training_seconds=round(training_seconds, 3),
        parameter_count=int(model.count_params()),
    )
    history_lists = {k: [float(x) for x in v] for k, v in history.history.items()}
    return TrainedModel(keras_bytes, record, history_lists, holdout, logs)


class TensorBoardScalars(keras.callbacks.Callback):
    """Each epoch's metrics as TensorBoard scalars: ``train/`` (loss, accuracy) and ``validation/``
    (the ``val_`` ones), the layout ``keras.callbacks.TensorBoard`` writes, so ``tensorboard --logdir``
    shows every run. Written with TensorFlow's own summary ops: Keras's callback needs the
    ``tensorboard`` package, which only viewing the logs does. Per epoch only (no graph, histograms or
    profiler): they would cost seconds a run."""

    def __init__(self, logs_dir: str):
        super().__init__()
        self.writers = {
            run: tf.summary.create_file_writer(os.path.join(logs_dir, run)) for run in ("train", "validation")
        }
        scalar = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
        scalar.plugin_data.plugin_name = "scalars"
        self.metadata = scalar.SerializeToString()

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            run = "validation" if name.startswith("val_") else "train"
            with self.writers[run].as_default():
                tf.summary.write(
                    f"epoch_{name.removeprefix('val_')}", float(value), step=epoch, metadata=self.metadata
                )

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


def files_under(directory: str) -> dict[str, bytes]:
    """Every file below ``directory`` by its ``/``-separated relative path."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory).replace(os.sep, "/")] = handle.read()
    return found


class ProgressLog(keras.callbacks.Callback):
    """Logs each epoch's end, and within an epoch at most every ``every`` seconds of ``clock``, so a
    long epoch (a large dataset, a slow machine) still shows that it moves and how far it got."""

    def __init__(self, log, epochs: int, steps: int, every: float = PROGRESS_SECONDS, clock=time.monotonic):
        super().__init__()
        self.log, self.epochs, self.steps, self.every, self.clock = log, epochs, steps, every, clock
        self.epoch, self.last = 0, clock()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.last = epoch, self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            where = f"epoch {self.epoch + 1}/{self.epochs}, batch {batch + 1}/{self.steps}"
            self.log.info(f"{where}: {_shown(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.last = self.clock()
        self.log.info(f"epoch {epoch + 1}/{self.epochs}: {_shown(logs)}")


def _shown(logs) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())


Mistakes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Images, true classes, predicted classes and confidences of some misclassified examples."""


def predict_holdout(
    model: keras.Model, split: ShardSource, num_classes: int, keep: int = MISTAKES_KEPT
) -> HoldoutPredictions:
    """The confusion matrix and the ``keep`` most confident mistakes of ``model`` on one pass of
    ``split`` (read shard by shard, predicted in batches of the split's batch size)."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    # images, true class, predicted class, confidence of the mistakes kept so far
    kept: Mistakes = (np.empty((0, *split.image_shape), np.uint8), *(np.empty(0, np.int64),) * 2, np.empty(0))
    for number in split.shard_order(0):
        shard_images, shard_labels = split.read_shard(0, int(number))
        for start in range(0, len(shard_labels), split.batch_size):
            batch = shard_images[start : start + split.batch_size]
            labels = shard_labels[start : start + split.batch_size].astype(np.int64)
            probabilities = np.asarray(model.predict_on_batch(batch[..., np.newaxis]))
            guesses = probabilities.argmax(axis=1)
            np.add.at(confusion, (labels, guesses), 1)
            wrong = guesses != labels
            found = (batch[wrong], labels[wrong], guesses[wrong], probabilities.max(axis=1)[wrong])
            kept = _most_confident(kept, found, keep)
    return HoldoutPredictions(confusion, *kept)


def _most_confident(kept: Mistakes, found: Mistakes, keep: int) -> Mistakes:
    """The ``keep`` mistakes of both with the highest confidence (the last array); on ties, the earlier."""
    joined = [np.concatenate(pair) for pair in zip(kept, found, strict=True)]
    top = np.argsort(-joined[-1], kind="stable")[:keep]
    images, true, predicted, confidence = (a[top] for a in joined)
    return images, true, predicted, confidence


def model_to_bytes(model: keras.Model) -> bytes:
    """``model`` as ``.keras`` bytes written canonically (:func:`mnist_assets.model_file.canonical_keras`):
    the same model saved twice, in two processes, is the same bytes."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return model_file.canonical_keras(handle.read())


def model_from_bytes(keras_bytes: bytes) -> keras.Model:
    """A model from ``.keras`` bytes (Keras needs a file name, so via a private temporary file)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.keras")
        with open(path, "wb") as handle:
            handle.write(keras_bytes)
        return keras.saving.load_model(path, safe_mode=True)


class ShardSource(Protocol):
    """What :func:`batches_from` reads (``mnist_assets.loader.SplitLoader``)."""

    batch_size: int
    epochs: int | None
    drop_remainder: bool

    @property
    def rows(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int]: ...

    @property
    def shard_count(self) -> int: ...

    def shard_order(self, epoch: int) -> np.ndarray: ...

    def read_shard(self, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]: ...


def batches_from(source: ShardSource, channel_axis: bool = False, one_pass: bool = False) -> tf.data.Dataset:
    """tf.data batches of a split, epoch by epoch, in exactly the loader's order. ``one_pass`` reads
    only the first epoch, whatever the loader repeats.

    The stream is one step per shard read (epoch ``step // shard_count``, that epoch's shard at
    ``step % shard_count``), so reading runs ahead across epoch boundaries too. Each step is one
    ``tf.numpy_function`` call in a parallel map (``READ_AHEAD`` shards decode beside the one being
    batched; a ``from_generator`` feed made a training epoch ~42 s against ~22 s). ``rebatch`` then
    cuts whole shards into batches in C++, one copy per example: its batch sizes cycle per epoch and
    end on the epoch's remainder, so no batch spans two epochs (unbatch/batch element by element
    delivered a third of in-memory tf.data's examples/s)."""
    count, shape = source.shard_count, source.image_shape + ((1,) if channel_axis else ())

    def read(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        epoch, position = divmod(int(step), count)
        images, labels = source.read_shard(epoch, int(source.shard_order(epoch)[position]))
        return images.reshape(-1, *shape), labels

    def shard(step):
        images, labels = tf.numpy_function(read, [step], (tf.uint8, tf.int32))
        return tf.ensure_shape(images, (None, *shape)), tf.ensure_shape(labels, (None,))

    passes = 1 if one_pass else source.epochs
    steps = tf.data.Dataset.counter() if passes is None else tf.data.Dataset.range(passes * count)
    shards = steps.map(shard, num_parallel_calls=READ_AHEAD, deterministic=True)
    batches = shards.rebatch(epoch_batch_sizes(source.rows, source.batch_size))
    if source.drop_remainder and source.rows % source.batch_size:
        batches = batches.filter(lambda images, labels: tf.shape(labels)[0] == source.batch_size)
    return batches.prefetch(tf.data.AUTOTUNE)


def epoch_batch_sizes(rows: int, batch_size: int) -> list[int]:
    """One epoch's batch sizes: full batches, then the remainder if any."""
    full, remainder = divmod(rows, batch_size)
    return [batch_size] * full + ([remainder] if remainder else [])
