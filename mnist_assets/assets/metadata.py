"""What the assets show in the UI: pictures, tables and rounded numbers for their metadata.

Kept apart from the asset wiring (``mnist_assets.assets``) so a layer's body reads as what it computes;
each asset's code version still hashes the helpers it shows its results with.
"""

from __future__ import annotations

import contextlib
from typing import Any

import dagster as dg
import numpy as np

import mnist_assets.assets.pictures as pictures
from mnist_assets import manifest, shards
from mnist_assets.catalog import Dataset
from mnist_assets.keys import label
from mnist_assets.models import BestModelRecord
from mnist_assets.storage.faults import StorageError

PLACES = {"metric": 4, "seconds": 2}
"""Digits kept in metadata numbers: readable in the UI, still numbers so the Plots tab draws them."""


def picture(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md(pictures.markdown(png, alt))


def idx_pictures(store, asset_key: dg.AssetKey, file_key: str, dataset: Dataset) -> dict[str, Any]:
    """An images partition's first examples, named by the stored labels partition when there is one
    (the labels file is another partition, materialized in its own run: before it, rows are shown)."""
    if not file_key.endswith("images"):
        return {}
    images = store.read(store.asset_dir(asset_key), file_key, label(asset_key, file_key))
    labels_key = file_key.replace("images", "labels")
    labels = None
    with contextlib.suppress(StorageError):  # absent or unreadable: the picture goes without names
        labels = store.read(store.asset_dir(asset_key), labels_key, label(asset_key, labels_key))
    if labels is not None and len(labels) != len(images):
        labels = None
    named = "with their class names" if labels is not None else f"by row ({labels_key} not stored yet)"
    png = pictures.sample_grid(images, labels, dataset.class_names)
    return {"samples": picture(png, f"{dataset.id} {file_key}: the first images {named}")}


def split_pictures(split: str, images, labels, options: shards.ShardOptions, dataset: Dataset) -> dict:
    """A split's first examples (its stored order) and its examples per class."""
    rows = shards.split_order(split, len(labels), options)
    first = rows[: pictures.SAMPLE_COUNT]
    counts = np.bincount(labels[rows], minlength=len(dataset.class_names))
    samples = pictures.sample_grid(images[first], labels[first], dataset.class_names)
    histogram = pictures.label_histogram(counts, dataset.class_names)
    return {
        "samples": picture(samples, f"{dataset.id} {split}: the first examples with their class names"),
        "label_histogram": picture(histogram, f"{dataset.id} {split}: examples per class"),
    }


def shard_files(encoded: manifest.Manifest) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord({"file": s.file, "rows": s.rows, "bytes": s.bytes}) for s in encoded.shards],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("file", "string", description="Parquet file in the split's directory"),
                dg.TableColumn("rows", "int"),
                dg.TableColumn("bytes", "int"),
            ]
        ),
    )


def history_table(history: dict[str, list[float]]) -> dg.TableMetadataValue:
    """One row per epoch with every metric Keras recorded (train and ``val_`` validation), rounded."""
    names = list(history)
    return dg.MetadataValue.table(
        [
            dg.TableRecord(
                {
                    "epoch": epoch,
                    **{n: round(v, PLACES["metric"]) for n, v in zip(names, values, strict=True)},
                }
            )
            for epoch, values in enumerate(zip(*history.values(), strict=True), start=1)
        ],
        schema=dg.TableSchema(
            columns=[dg.TableColumn("epoch", "int"), *(dg.TableColumn(n, "float") for n in names)]
        ),
    )


def checkpoint_metadata(model, dataset: Dataset, name: str) -> dict[str, Any]:
    """Rounded metrics (``<split>_<metric>``), the epoch history as a table, and the pictures: training
    curves, the holdout confusion matrix and the most confident holdout mistakes."""
    record, holdout, names = model.record, model.holdout, dataset.class_names
    metadata: dict[str, Any] = {
        f"{split}_{name}": round(value, PLACES["metric"])
        for split, metrics in record.metrics.items()
        for name, value in metrics.items()
    }
    metadata |= {
        "epochs": record.epochs,
        "training_seconds": round(record.training_seconds, PLACES["seconds"]),
        "parameter_count": record.parameter_count,
        "history": history_table(model.history),
        "training_curves": picture(
            pictures.training_curves(model.history),
            f"{dataset.id} checkpoint[{name}]: loss and accuracy per epoch, train and validation",
        ),
    }
    if holdout is not None:
        matrix = pictures.confusion_matrix(holdout.confusion, names)
        mistakes = pictures.confident_mistakes(
            holdout.mistake_images,
            holdout.mistake_labels,
            holdout.mistake_predictions,
            holdout.mistake_confidence,
            names,
        )
        metadata |= {
            "confusion_matrix": picture(
                matrix,
                f"{dataset.id} checkpoint[{name}]: confusion matrix on holdout, "
                "true class by predicted class",
            ),
            "confident_mistakes": picture(
                mistakes,
                f"{dataset.id} checkpoint[{name}]: the most confident holdout mistakes, true → predicted",
            ),
        }
    return metadata


def ranking_table(record: BestModelRecord) -> dg.TableMetadataValue:
    """Every candidate with its rank (blank: did not compete), accuracies, parameters and note."""
    columns = [
        dg.TableColumn("rank", "int"),
        dg.TableColumn("model", "string"),
        dg.TableColumn("validation_accuracy", "float", description="test split: what ranks"),
        dg.TableColumn("holdout_accuracy", "float", description="reported only, never ranks"),
        dg.TableColumn("parameter_count", "int", description="fewer wins a tie"),
        dg.TableColumn("note", "string", description="why it did not compete, or how a tie was broken"),
    ]

    def accuracy(candidate, split: str) -> float | None:
        value = candidate.metrics.get(split, {}).get("accuracy")
        return None if value is None else round(value, PLACES["metric"])

    rows = [
        dg.TableRecord(
            {
                "rank": c.rank,
                "model": c.model,
                "validation_accuracy": accuracy(c, "test"),
                "holdout_accuracy": accuracy(c, "holdout"),
                "parameter_count": c.parameter_count,
                "note": c.note,
            }
        )
        for c in record.ranking
    ]
    return dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=columns))
