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

    def shard_order(self, epoch: int) -> np.ndarray: ...

    def read_shard(self, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]: ...


def batches_from(source: ShardSource, channel_axis: bool = False, one_pass: bool = False) -> tf.data.Dataset:
    """tf.data batches of a split, epoch by epoch, in exactly the loader's order: each epoch's shards
    are read and decoded on parallel threads (the order kept), cut into batches, prefetched.
    ``one_pass`` reads only the first epoch, whatever the loader repeats.

    Shards enter through ``tf.numpy_function`` inside a parallel map, not ``from_generator``: one
    Fashion-MNIST training epoch fed by a generator took 42 s in three runs here, against 22-23 s
    fed this way (in-memory tensors: 22-42 s; this machine's epochs are bimodal)."""
    height, width = source.image_shape

    def read(epoch, number):
        images, labels = tf.numpy_function(
            lambda e, n: source.read_shard(int(e), int(n)), [epoch, number], (tf.uint8, tf.int32)
        )
        return tf.ensure_shape(images, (None, height, width)), tf.ensure_shape(labels, (None,))

    def one_epoch(epoch):
        order = tf.numpy_function(lambda e: source.shard_order(int(e)).astype(np.int64), [epoch], tf.int64)
        shards = tf.data.Dataset.from_tensor_slices(tf.ensure_shape(order, (None,)))
        examples = shards.map(
            lambda number: read(epoch, number), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return examples.unbatch().batch(source.batch_size, drop_remainder=source.drop_remainder)

    passes = 1 if one_pass else source.epochs
    epochs = tf.data.Dataset.counter() if passes is None else tf.data.Dataset.range(passes)
    batches = epochs.flat_map(one_epoch)
    if channel_axis:
        batches = batches.map(lambda images, labels: (images[..., tf.newaxis], labels))
    return batches.prefetch(tf.data.AUTOTUNE)
