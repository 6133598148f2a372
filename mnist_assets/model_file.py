"""A trained model's ``.keras`` file written canonically, and the content version of what the model is.

``model.save`` writes a zip whose bytes change with every save of the same model: ``metadata.json``
carries the time it was saved, ``config.json`` numbers the objects layers share by their memory
address (``shared_object_id``), and the weights' zip entry has the time as its date. Hashing those
bytes made every retrain a new checkpoint data version, so ``best_model`` reran and storage kept a
duplicate version even when the weights were byte-identical. Here the file is rewritten without any
of that, and the data version hashes the model itself (its architecture and weights), so a retrain that
reproduces the model reproduces both the file's sha256 and the data version.

Plain bytes and numpy in, bytes and hex out: nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
"""The zip entries of a ``.keras`` file: two JSON documents and the variables in HDF5 (kept as is)."""
OPTIMIZER = "optimizer"
"""The HDF5 group of the optimizer's state: how training got there, not what the model is."""
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
"""Every entry's date: the earliest a zip can say, the one Keras gives its own JSON entries."""
ZIP_MODE = 0o644 << 16
"""Every entry's permissions, so the file does not depend on the umask of the process that saved it."""
SHARED_ID = "shared_object_id"
UNSTABLE_METADATA = ("date_saved",)
"""``metadata.json`` keys that say when, not what (Keras writes them and never reads them back)."""


@dataclass(frozen=True)
class Weight:
    """One model variable as the content version sees it."""

    path: str
    """Where the variable is in the weights file (``layers/conv2d/vars/0``): unique within a model."""
    value: np.ndarray


def canonical_config(config: Any) -> Any:
    """``config`` (a Keras config as parsed JSON) with every ``shared_object_id`` renumbered 1, 2, …
    in the order first met, walking keys sorted: the objects that were shared stay shared on load, and
    the numbers no longer are memory addresses."""
    numbers: dict[Any, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        renumbered = {}
        for key in sorted(value):
            item = value[key]
            if key == SHARED_ID:
                item = numbers.setdefault(item, len(numbers) + 1)
            renumbered[key] = walk(item)
        return renumbered

    return walk(config)


def canonical_json(value: Any) -> bytes:
    """One spelling of a JSON value: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def canonical_keras(keras_bytes: bytes) -> bytes:
    """The ``.keras`` zip ``model.save`` wrote, rewritten so that saving the same model twice gives the
    same bytes: entries in name order, each stored (Keras does not compress either) with the same date
    and permissions, ``config.json`` canonical (:func:`canonical_config`), ``metadata.json`` without the
    save time. ``keras.saving.load_model`` (``safe_mode`` on) reads it as it reads Keras's own."""
    with zipfile.ZipFile(io.BytesIO(keras_bytes)) as source:
        entries = {name: source.read(name) for name in sorted(source.namelist())}
    if CONFIG not in entries:
        raise ValueError(f"a .keras file has {CONFIG}; this zip has only {sorted(entries)}")
    entries[CONFIG] = canonical_json(canonical_config(json.loads(entries[CONFIG])))
    if METADATA in entries:
        metadata = json.loads(entries[METADATA])
        entries[METADATA] = canonical_json({k: v for k, v in metadata.items() if k not in UNSTABLE_METADATA})
    written = io.BytesIO()
    with zipfile.ZipFile(written, "w", zipfile.ZIP_STORED) as target:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr, info.create_system = ZIP_MODE, 3  # 3: Unix, whichever system writes it
            target.writestr(info, data)
    return written.getvalue()


def content_version(config: Any, weights: Iterable[Weight]) -> str:
    """The data version of a model: the sha256 of its architecture and its weights, nothing else.

    The config is hashed canonically (:func:`canonical_config`, :func:`canonical_json`), so memory
    addresses do not count; each weight by its path, dtype, shape and little-endian C-order bytes,
    in path order (length-prefixed, so no two different models hash alike by concatenation). What the
    zip says about when it was written, and the optimizer's state, are not what the model is; two
    trainings that end with the same architecture and weights get the same version."""
    digest = hashlib.sha256()

    def field(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    field(canonical_json(canonical_config(config)))
    for weight in sorted(weights, key=lambda w: w.path):
        value = np.ascontiguousarray(weight.value)
        if value.dtype.byteorder == ">":
            value = value.byteswap().view(value.dtype.newbyteorder("<"))
        field(weight.path.encode())
        field(value.dtype.name.encode())
        field(canonical_json(list(value.shape)))
        field(value.tobytes())
    return digest.hexdigest()


def data_version(keras_bytes: bytes) -> str:
    """The checkpoint's data version: :func:`content_version` of the model a ``.keras`` file holds
    (its ``config.json`` and every variable of ``model.weights.h5`` but the optimizer's), read from
    the file itself, so it can be recomputed from storage at any time."""
    with zipfile.ZipFile(io.BytesIO(keras_bytes)) as source:
        config, weights = json.loads(source.read(CONFIG)), source.read(WEIGHTS)
    return content_version(config, model_weights(weights))


def model_weights(h5_bytes: bytes) -> list[Weight]:
    """Every variable of a Keras weights file (HDF5) outside the optimizer's group, by its path."""
    import h5py  # only when a model is hashed: loading the definitions does not need it

    found: list[Weight] = []

    def visit(path: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and path.split("/", 1)[0] != OPTIMIZER:
            found.append(Weight(path, item[()]))

    with h5py.File(io.BytesIO(h5_bytes), "r") as weights:
        weights.visititems(visit)
    return found
