"""The shards stage: train / test / holdout cut from the idx arrays into Parquet shards, then checked
as stored (read back from storage, not from memory) before anything downstream reads them."""

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeAlias, cast

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pydantic
from pydantic import Field

import mnist_assets.assets.metadata as metadata
import mnist_assets.assets.pictures as pictures
from mnist_assets import manifest, shards
from mnist_assets.assets.common import (
    FILES_TO_SPLITS,
    SPLITS,
    STORAGE,
    BlockingCheck,
    Judgement,
    asset_key,
    versioned_asset,
    with_defaults,
)
from mnist_assets.catalog import Dataset
from mnist_assets.hashing import sha256
from mnist_assets.keys import label
from mnist_assets.manifest import Codec, Split
from mnist_assets.storage.backends import Stored
from mnist_assets.storage.faults import REPAIR, StorageError
from mnist_assets.tags import COLUMN_SCHEMA, DATA_VERSION, ROW_COUNT

_SHARD_DEFAULTS = shards.ShardOptions()
"""The shard settings' defaults live once, in ``shards.ShardOptions``; the run config shows them."""


class ShardConfig(dg.Config):
    seed: int = Field(default=_SHARD_DEFAULTS.seed, description="Seed of the train/test permutation.")
    validation_fraction: float = Field(
        default=_SHARD_DEFAULTS.validation_fraction, description="Share of official train → test."
    )
    rows_per_shard: int = Field(
        default=_SHARD_DEFAULTS.rows_per_shard, description="Examples per Parquet file."
    )
    compression: str = Field(
        default=_SHARD_DEFAULTS.compression, description="Parquet codec: " + ", ".join(shards.COMPRESSIONS)
    )

    def options(self) -> shards.ShardOptions:
        # a str in the run config (Dagster's config types have no Literal); ShardOptions checks it is a Codec
        codec = cast(Codec, self.compression)
        return shards.ShardOptions(self.seed, self.validation_fraction, self.rows_per_shard, codec)

    @pydantic.model_validator(mode="after")
    def _valid(self) -> Self:
        """Refused where it is written (catalog, launchpad), by ``ShardOptions``' own rules."""
        self.options()
        return self


MANIFEST_CHECK = BlockingCheck(
    "manifest_matches_files",
    "The committed manifest, read back from storage, names the shards just written (same root hash) "
    "and every shard matches its sha256.",
)
SPLIT_CHECK = BlockingCheck(
    "split_sizes_and_disjointness",
    "The stored rows are exactly this split of the seeded permutation: no row twice, train and test "
    "disjoint and together the whole official train file.",
)


def read_back(store, key: dg.AssetKey, split: str, what: str) -> tuple[manifest.Manifest, np.ndarray]:
    """The committed manifest of ``split`` and its ``source_index`` column, one shard at a time, each
    shard verified against its manifest sha256 (a damaged one fails the step)."""
    opened = store.open(key, split)
    try:
        columns = []
        for entry in opened.manifest.shards:
            data = opened.files[entry.file].read()
            if sha256(data) != entry.sha256:
                raise StorageError(f"{what}: {entry.file} does not match its manifest sha256; {REPAIR}")
            columns.append(pq.read_table(io.BytesIO(data), columns=["source_index"]).column(0).to_numpy())
    finally:
        opened.close()
    return opened.manifest, np.concatenate(columns) if columns else np.empty(0, np.uint32)


def recorded_version(context: dg.AssetExecutionContext, key: dg.AssetKey, partition: str) -> str:
    """The data version the event log holds for an input partition: for idx, its payload sha256, the
    value Dagster records as this step's provenance (looked up, not hashed again from the array)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    tags = (materialization.tags or {}) if materialization else {}
    return tags.get(DATA_VERSION, "unknown")


def split_check(split, source_rows, source_index, options) -> dg.AssetCheckResult:
    rows = np.sort(source_index)
    expected = shards.split_rows(split, source_rows, options)
    problems = []
    if np.any(rows[1:] == rows[:-1]):  # sorted: a repeated row sits next to itself
        problems.append("a source row appears twice")
    if not np.array_equal(rows, expected):
        problems.append(f"rows are not the {split} split of seed {options.seed}")
    if split != "holdout":
        other = shards.split_rows("test" if split == "train" else "train", source_rows, options)
        # both sorted: look the smaller up in the larger (memory of the smaller, not of both sorted again)
        needles, haystack = sorted((rows, other), key=len)
        found = np.searchsorted(haystack, needles).clip(max=max(len(haystack) - 1, 0))
        if len(haystack) and np.any(haystack[found] == needles):
            problems.append("train and test share rows")
        if len(rows) + len(other) != source_rows:
            problems.append("train and test do not cover the official train set")
    return SPLIT_CHECK.result(
        not problems, {"rows": len(rows), "source_rows": source_rows, "problems": "; ".join(problems)}
    )


def cut_split(
    dataset: Dataset,
    split: Split,
    arrays: dict[str, np.ndarray],
    sources: dict[str, str],
    options: shards.ShardOptions,
    commit: Callable[[Callable[[Any], manifest.Manifest]], Stored],
) -> tuple[Stored, manifest.Manifest]:
    """Cut ``split`` from the idx arrays into Parquet shards, each committed through ``commit`` as soon
    as it is encoded (the manifest last); the receipt and the manifest."""
    images_key, labels_key = shards.SPLIT_SOURCES[split]
    images, labels = arrays[images_key], arrays[labels_key]  # memory-mapped: read one shard at a time
    written: list[manifest.Manifest] = []

    def write(put):
        written.append(
            shards.write(dataset.id, split, images, labels, sources, dataset.class_names, options, put)
        )
        return written[0]

    stored = commit(write)
    return stored, written[0]


def check_committed_split(
    store,
    key: dg.AssetKey,
    split: str,
    encoded: manifest.Manifest,
    source_rows: int,
    options,
    what: str,
) -> list[dg.AssetCheckResult]:
    """The checks of a committed split, read back from storage: checks see the stored files, not memory."""
    committed, source_index = read_back(store, key, split, what)
    return [
        MANIFEST_CHECK.result(
            committed.root_sha256 == encoded.root_sha256 and len(source_index) == encoded.rows,
            {"root_sha256": committed.root_sha256, "shards": len(committed.shards)},
        ),
        split_check(split, source_rows, source_index, options),
    ]


def split_metadata(
    dataset: Dataset, split: Split, arrays: dict[str, np.ndarray], encoded: manifest.Manifest, options
) -> dict[str, Any]:
    """What a split's materialization shows: its columns, rows, shard files and sample pictures."""
    images_key, labels_key = shards.SPLIT_SOURCES[split]
    columns = [dg.TableColumn(c.name, c.type, description=c.description) for c in encoded.columns]
    return {
        COLUMN_SCHEMA: dg.TableSchema(columns=columns),
        ROW_COUNT: encoded.rows,
        "shard_files": metadata.shard_files(encoded),
        **metadata.split_pictures(split, arrays[images_key], arrays[labels_key], options, dataset),
    }


SHARDS_USES = (
    shards,
    manifest,
    cut_split,
    check_committed_split,
    read_back,
    split_check,
    recorded_version,
    split_metadata,
    metadata.split_pictures,
    metadata.shard_files,
    metadata.picture,
    pictures,
)
"""What the shards asset's code version hashes besides its body and its settings' defaults."""


def shards_asset(dataset: Dataset, judgement: Judgement) -> dg.AssetsDefinition:
    key, idx_key = asset_key(dataset, "shards"), asset_key(dataset, "idx")
    if TYPE_CHECKING:
        # mypy cannot take a class made at runtime as an annotation; this subclass only changes the
        # fields' defaults, so its base types the same attributes
        DatasetShardConfig: TypeAlias = ShardConfig
    else:  # the real class: Dagster reads the config annotation below for the run config schema
        DatasetShardConfig = with_defaults(
            ShardConfig, dataset.shards, f"{dataset.id}_ShardConfig", dataset.id, "shards"
        )

    @versioned_asset(
        judgement.fresh,
        uses=(*SHARDS_USES, DatasetShardConfig().model_dump()),
        checks=(MANIFEST_CHECK, SPLIT_CHECK),
        key=key,
        group_name=dataset.id,
        partitions_def=SPLITS,
        ins={"arrays": dg.AssetIn(idx_key, partition_mapping=FILES_TO_SPLITS)},
        io_manager_key="shards_io_manager",
        required_resource_keys={"shards_io_manager"},
        description=f"{dataset.title}: train / test (a seeded share of the official train file) / holdout "
        "(the official test file), cut from the idx arrays into Parquet shards (image, label, "
        "source_index) plus a manifest with a sha256 per shard and a root hash. Stored under "
        f"`{dataset.id}/shards/<split>/` in {STORAGE}, committed by its `_manifest.json`; read them with "
        "`mnist_assets.load`.",
        kinds={"parquet"},
    )
    def shard_sets(
        context: dg.AssetExecutionContext, config: DatasetShardConfig, arrays: dict[str, np.ndarray]
    ):
        split, options = cast(Split, context.partition_key), config.options()  # a SPLITS partition
        images_key, labels_key = shards.SPLIT_SOURCES[split]
        sources = {
            k: recorded_version(context, asset_key(dataset, "idx"), k) for k in (images_key, labels_key)
        }
        store = context.resources.shards_io_manager

        def commit(write):
            return store.commit(key, split, write)

        stored, encoded = cut_split(dataset, split, arrays, sources, options, commit)
        yield dg.Output(
            stored,
            data_version=dg.DataVersion(encoded.root_sha256),
            metadata=split_metadata(dataset, split, arrays, encoded, options),
        )
        source_rows, what = len(arrays[labels_key]), label(key, split)
        yield from check_committed_split(store, key, split, encoded, source_rows, options, what)

    return shard_sets
