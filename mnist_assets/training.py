"""Training and evaluating the CNN: the only module that imports TensorFlow.

Import it inside asset bodies, never at module level elsewhere, so loading the definitions stays fast.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mnist_assets.loader import READ_AHEAD
from mnist_assets.quiet import tensorflow_import

# TensorFlow's C++ start-up lines stay hidden unless MNIST_ASSETS_VERBOSE=1 or TF_CPP_MIN_LOG_LEVEL says
# otherwise (mnist_assets.quiet); this must be the first import of TensorFlow in the process.
with tensorflow_import():
    import keras
    import tensorflow as tf


class Hyperparameters(Protocol):
    epochs: int
    batch_size: int
    learning_rate: float
    conv_filters: list[int]
    dense_units: int
    dropout: float
    batch_norm: bool
    seed: int


@dataclass(frozen=True)
class TrainedModel:
    keras_bytes: bytes
    record: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)


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
    splits: Mapping[str, ShardSource], num_classes: int, params: Hyperparameters, log=None
) -> TrainedModel:
    """Fit on train, validate on test each epoch, evaluate every split once at the end.

    Every split streams from its shards (one epoch of ``train`` per Keras epoch, reshuffled by the
    loader's seed), so memory does not grow with the dataset. ``train`` and ``test`` must repeat
    forever (Keras reads a fixed number of batches from them each epoch)."""
    keras.utils.set_random_seed(params.seed)
    train_split, test_split = splits["train"], splits["test"]
    steps_per_epoch = _batches_per_epoch(train_split)
    model = build_model(train_split.image_shape, num_classes, params, steps_per_epoch)

    class _LogEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if log is not None:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
                log.info(f"epoch {epoch + 1}/{params.epochs}: {shown}")

    started = time.perf_counter()
    history = model.fit(
        batches_from(train_split, channel_axis=True),
        validation_data=batches_from(test_split, channel_axis=True),
        epochs=params.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=_batches_per_epoch(test_split),
        shuffle=False,  # the train loader shuffles, seeded, across and within shards
        verbose=0,
        callbacks=[_LogEpoch()],
    )
    training_seconds = time.perf_counter() - started
    metrics = {name: evaluate(model, split) for name, split in splits.items()}
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            keras_bytes = handle.read()
    record = {
        "metrics": metrics,
        "epochs": params.epochs,
        "training_seconds": round(training_seconds, 3),
        "parameter_count": int(model.count_params()),
    }
    return TrainedModel(keras_bytes, record, {k: [float(x) for x in v] for k, v in history.history.items()})


def load_model(keras_bytes: bytes) -> keras.Model:
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
