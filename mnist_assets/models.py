"""Model configurations and the choice of the best one: the training settings as data, and the ranking.

A dataset's catalog entry names its training configurations (``models``), each a few overrides on top of
the dataset-wide ``training`` settings, on top of :class:`TrainConfig`'s defaults. Each configuration is a
partition of the checkpoint, so it trains, versions, goes stale and fails on its own. ``best_model``
ranks the stored checkpoints by validation accuracy (the ``test`` split): holdout is the final exam, so
it is reported but never chooses, or it would stop measuring how the chosen model does on unseen data.

No TensorFlow here: ranking reads the checkpoint records, never the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import dagster as dg
import pydantic
from pydantic import Field
from pydantic.fields import FieldInfo

from mnist_assets.catalog import CatalogError, Dataset, explain
from mnist_assets.hashing import json_version
from mnist_assets.hyperparameters import Hyperparameters
from mnist_assets.manifest import CheckpointRecord


class TrainConfig(dg.Config, Hyperparameters):
    """One training configuration: the hyperparameters (:mod:`mnist_assets.hyperparameters`) and the
    floor its checkpoint must reach; the bounds refuse a mistake where it is written (catalog, launchpad)."""

    accuracy_floor: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Blocking check: holdout accuracy below this fails the checkpoint.",
    )


def _bounded(field: FieldInfo) -> Any:
    """The field's type with its bounds (``ge``, ``min_length``: pydantic keeps them as metadata)."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _overrides_of(base: type[dg.Config]) -> type[dg.Config]:
    """``base`` with every field optional and None by default: a run's overrides of one configuration.
    A value given keeps the field's bounds (``epochs: 0`` is refused where the run config is written)."""
    # Any: mypy matches ``**fields`` against create_model's own keywords (``__base__``, ...)
    fields: dict[str, Any] = {
        name: (
            _bounded(field) | None,
            Field(default=None, description=f"{field.description or name} (None: the catalog's value)"),
        )
        for name, field in base.model_fields.items()
    }
    return pydantic.create_model(f"{base.__name__}Overrides", __base__=dg.Config, **fields)


if TYPE_CHECKING:  # mypy cannot take a class made at runtime as an annotation; the base types it
    TrainOverrides: TypeAlias = dg.Config
else:
    TrainOverrides = _overrides_of(TrainConfig)
"""The checkpoint's run config: ``{"epochs": 1}`` trains this one run for one epoch, whichever
configuration the partition names; fields left None keep the configuration's value."""


def training_configs(dataset: Dataset) -> dict[str, TrainConfig]:
    """Every named configuration of ``dataset``, resolved: its overrides on the dataset's ``training``
    on :class:`TrainConfig`'s defaults. An unknown key is refused, naming where it is written."""
    allowed = ", ".join(sorted(TrainConfig.model_fields))
    layers = {"training": dataset.training}
    layers |= {f"models/{name}": dataset.models.get(name, {}) for name in dataset.model_names}
    for where, values in layers.items():
        unknown = sorted(set(values) - set(TrainConfig.model_fields))
        if unknown:
            raise CatalogError(
                f"not a key here; allowed keys: {allowed}", dataset.id, f"{where}/{unknown[0]}"
            )
    configs = {}
    for name in dataset.model_names:
        values = {**dataset.training, **dataset.models.get(name, {})}
        try:
            configs[name] = TrainConfig(**values)
        except pydantic.ValidationError as error:
            # the wrong value is the model's own or the dataset's training setting
            field = str(error.errors()[0]["loc"][0])
            own = dataset.models.get(name, {})
            prefix, layer = (("models", name), own) if field in own else (("training",), dataset.training)
            raise explain(dataset.id, error, layer, prefix) from None
    return configs


def with_overrides(config: TrainConfig, overrides: dg.Config) -> TrainConfig:
    """``config`` with the run's overrides (fields not None) applied."""
    return TrainConfig(**{**config.model_dump(), **overrides.model_dump(exclude_none=True)})


def config_version(config: TrainConfig) -> str:
    """The data version of one configuration as the ``model_configs`` source reports it."""
    return json_version(config.model_dump())


CHOSEN_BY = (
    "validation accuracy (the test split), highest first; ties: fewer parameters, then name. "
    "Holdout accuracy is reported, never used to choose."
)


class Candidate(pydantic.BaseModel):
    """One configuration in the ranking: its checkpoint and metrics, or why it did not compete."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    model: str
    rank: int | None = None
    """1 for the winner; None when it did not compete."""
    competing: bool
    note: str = ""
    """Why it did not compete, or how a tie with its neighbour in the ranking was broken."""
    checkpoint_sha256: str | None = None
    checkpoint_file: str | None = None
    parameter_count: int | None = None
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)

    @property
    def validation_accuracy(self) -> float:
        return self.metrics["test"]["accuracy"]


class BestModelRecord(pydantic.BaseModel):
    """``best_model.json``: which configuration's checkpoint is promoted, and the whole ranking."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    dataset: str
    winner: str
    checkpoint_sha256: str
    checkpoint_file: str
    """The winner's ``.keras`` file, relative to the storage root."""
    chosen_by: str = CHOSEN_BY
    ranking: list[Candidate]

    @property
    def data_version(self) -> str:
        """Changes only when the winner or its checkpoint does, so nothing downstream reruns otherwise."""
        return json_version({"winner": self.winner, "checkpoint_sha256": self.checkpoint_sha256})


class NoCandidate(ValueError):
    """No configuration has a checkpoint that may compete."""


Entry = CheckpointRecord | str
"""A configuration's stored checkpoint record, or the reason it has none that may compete."""


def _order(candidate: Candidate) -> tuple[float, int, str]:
    return (-candidate.validation_accuracy, candidate.parameter_count or 0, candidate.model)


def _tie_note(ahead: Candidate, behind: Candidate) -> str:
    """How ``behind`` came after ``ahead`` when their validation accuracy is equal (else nothing)."""
    if ahead.validation_accuracy != behind.validation_accuracy:
        return ""
    tie = f"tied with {ahead.model} on validation accuracy {ahead.validation_accuracy:.4f}"
    if ahead.parameter_count != behind.parameter_count:
        more = f"{behind.parameter_count:,} > {ahead.parameter_count:,}"
        return f"{tie}; ranked after it for more parameters ({more})"
    return f"{tie} and on parameters; ranked after it by name"


def rank(dataset_id: str, entries: Mapping[str, Entry], files: Mapping[str, str]) -> BestModelRecord:
    """The ranking of every configuration (``files``: each stored checkpoint's path under the storage
    root). Raises :class:`NoCandidate` when none competes."""
    competing = [
        Candidate(
            model=name,
            competing=True,
            checkpoint_sha256=entry.sha256,
            checkpoint_file=files[name],
            parameter_count=entry.parameter_count,
            metrics=entry.metrics,
        )
        for name, entry in entries.items()
        if isinstance(entry, CheckpointRecord)
    ]
    if not competing:
        reasons = "; ".join(f"{name}: {entry}" for name, entry in entries.items())
        raise NoCandidate(f"{dataset_id}: no model configuration has a checkpoint to compete ({reasons})")
    competing.sort(key=_order)
    ranked = [
        c.model_copy(update={"rank": i, "note": _tie_note(competing[i - 2], c) if i > 1 else ""})
        for i, c in enumerate(competing, start=1)
    ]
    absent = [
        Candidate(model=name, competing=False, note=entry)
        for name, entry in entries.items()
        if isinstance(entry, str)
    ]
    winner = ranked[0]
    assert winner.checkpoint_sha256 and winner.checkpoint_file, "a competing candidate has a checkpoint"
    return BestModelRecord(
        dataset=dataset_id,
        winner=winner.model,
        checkpoint_sha256=winner.checkpoint_sha256,
        checkpoint_file=winner.checkpoint_file,
        ranking=ranked + absent,
    )
