"""The on-disk records that commit multi-file artifacts: typed, written last, read first.

Readers and writers both go through these models, which refuse unknown fields. A shard set without a
valid :class:`Manifest` does not exist, and a shard whose sha256 differs from its manifest entry is
damaged; a checkpoint is the ``.keras`` file its :class:`CheckpointRecord` names, with that sha256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "test", "holdout"]
"""A shard set's split: a seeded share of the official train file cut in two, and the official test file."""
SPLITS: tuple[Split, ...] = get_args(Split)
Codec = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
"""The Parquet compression of a shard set's files."""
CODECS: tuple[Codec, ...] = get_args(Codec)

FORMAT = "mnist_assets.shards/1"


class ShardEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = Field(pattern=r"^part-\d{5}-[0-9a-f]{16}\.parquet$")
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: str
    description: str


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    dataset: str
    split: Split
    rows: int
    image_shape: tuple[int, int]
    class_names: tuple[str, ...]
    columns: tuple[Column, ...]
    shards: tuple[ShardEntry, ...]
    root_sha256: str
    seed: int
    validation_fraction: float
    rows_per_shard: int
    compression: Codec
    source_payload_sha256: dict[str, str]

    @staticmethod
    def root_hash(shards: Sequence[ShardEntry]) -> str:
        """One hash over the ordered shard list: equal iff every shard's content is equal."""
        digest = hashlib.sha256()
        for shard in shards:
            digest.update(f"{shard.file}\t{shard.rows}\t{shard.sha256}\n".encode())
        return digest.hexdigest()

    def check_consistent(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"unknown manifest format {self.format!r}")
        if sum(s.rows for s in self.shards) != self.rows:
            raise ValueError("shard row counts do not add up to the manifest's rows")
        if self.root_hash(self.shards) != self.root_sha256:
            raise ValueError("root_sha256 does not match the shard list")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        manifest = cls.model_validate_json(text)
        manifest.check_consistent()
        return manifest


class TrainingRecord(BaseModel):
    """How a model trained and scored: what :func:`mnist_assets.training.train` reports, typed from the
    start so the checkpoint's check, metadata and record read the same fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics: dict[str, dict[str, float]]
    """split → metric → value, every split evaluated once after training."""
    epochs: int
    training_seconds: float
    parameter_count: int

    @property
    def holdout_accuracy(self) -> float:
        return self.metrics["holdout"]["accuracy"]


class TrainedCheckpoint(TrainingRecord):
    """A training record with what the model was trained from (the checkpoint asset adds it): the
    ``checkpoint.json`` to be, before storage names its files."""

    config: dict[str, Any]
    shards_root_sha256: dict[str, str]
    """The shard sets it was trained on (their manifests' root hashes)."""


class CheckpointRecord(TrainedCheckpoint):
    """``checkpoint.json``: the model file it commits, how the model was trained and how it scored."""

    file: str = Field(pattern=r"^model-[0-9a-f]{16}\.keras$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(default=None, ge=0)
    """None in records written before sizes were recorded: then only presence can be checked."""
    logs: tuple[str, ...] = ()
    """The training run's TensorBoard files, relative to the record's directory (committed with it)."""
