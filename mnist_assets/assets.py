"""The asset graph of one dataset: urls → raw_gzip → idx → shards → checkpoint.

Every dataset gets the same graph, built from its catalog entry, under its own key prefix and group.
Each asset returns a content data version, so an identical result leaves downstream assets fresh, and
carries a code version hashed from the code that computes it.
"""

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pydantic
from pydantic import Field

from mnist_assets import download, idx, loader, manifest, pictures, shards
from mnist_assets.catalog import FILE_KEYS, CatalogError, Dataset, redact_url
from mnist_assets.io_managers import REPAIR, StorageError, Stored
from mnist_assets.versioning import code_version, json_version

FILES = dg.StaticPartitionsDefinition(
    sorted(FILE_KEYS, key=lambda k: (k.startswith("test"), k.endswith("images")))
)
"""Labels before images: refresh builds partitions in this order, so an images partition's sample picture
can name its classes on a first build."""
SPLITS = dg.StaticPartitionsDefinition(list(shards.SPLITS))
FILES_TO_SPLITS = dg.StaticPartitionMapping(
    {
        source: [split for split, pair in shards.SPLIT_SOURCES.items() if source in pair]
        for source in FILE_KEYS
    }
)


class FetchConfig(dg.Config):
    mirrors: list[str] = Field(
        default_factory=list,
        description="Mirror base URLs or local directories to use instead of the catalog's list "
        "(the MNIST_ASSETS_MIRROR_<DATASET> environment variable does the same).",
    )


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
        return shards.ShardOptions(self.seed, self.validation_fraction, self.rows_per_shard, self.compression)


class TrainConfig(dg.Config):
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    conv_filters: list[int] = Field(default_factory=lambda: [32, 64])
    dense_units: int = 128
    dropout: float = 0.4
    batch_norm: bool = True
    seed: int = 0
    accuracy_floor: float = Field(
        default=0.8, description="Blocking check: holdout accuracy below this fails the checkpoint."
    )


ConfigT = TypeVar("ConfigT", bound=dg.Config)


def with_defaults(base: type[ConfigT], overrides: dict, name: str, where: str) -> type[ConfigT]:
    """``base`` with the catalog's per-dataset defaults, so the launchpad and the code version see them."""
    unknown = sorted(set(overrides) - set(base.model_fields))
    if unknown:
        raise CatalogError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(base.model_fields))}"
        )
    # Any: mypy matches ``**fields`` against every keyword of create_model (``__base__``, ``__config__``,
    # ...), so typed as the (annotation, Field) pairs they are, the call would not type-check
    fields: dict[str, Any] = {
        k: (base.model_fields[k].annotation, Field(default=v, description=base.model_fields[k].description))
        for k, v in overrides.items()
    }
    return pydantic.create_model(name, __base__=base, **fields) if fields else base


def versioned_asset(uses: tuple = (), **kwargs):
    """``dg.asset`` whose code version hashes the function's own source plus what it ``uses``
    (modules, helpers, settings dicts): editing any of them makes the asset stale."""

    def wrap(fn):
        return dg.asset(code_version=code_version(fn, *uses), **kwargs)(fn)

    return wrap


def url_entry(dataset: Dataset, file_key: str, mirrors: list[str]) -> dict:
    """What identifies a source file: where to look (in order) and what its content must be."""
    file = dataset.file(file_key)
    return {
        "filename": file.filename,
        "urls": dataset.file_urls(mirrors)[file_key],
        "payload_size": file.payload_size,
        "payload_sha256": file.payload_sha256,
        "gzip_md5": file.gzip_md5,
    }


def _expected_kind(key: str, dataset: Dataset) -> tuple[int, tuple[int, ...]]:
    """(ndim, trailing shape) an IDX file of this partition must have."""
    return (3, dataset.image_shape) if key.endswith("images") else (1, ())


def _read_back(store, asset_key: dg.AssetKey, split: str, what: str) -> tuple[manifest.Manifest, np.ndarray]:
    """The committed manifest of ``split`` and its ``source_index`` column, one shard at a time, each
    shard verified against its manifest sha256 (a damaged one fails the step)."""
    opened = store.open(asset_key, split)
    try:
        columns = []
        for entry in opened.manifest.shards:
            data = opened.files[entry.file].read()
            if idx.sha256(data) != entry.sha256:
                raise StorageError(f"{what}: {entry.file} does not match its manifest sha256; {REPAIR}")
            columns.append(pq.read_table(io.BytesIO(data), columns=["source_index"]).column(0).to_numpy())
    finally:
        opened.close()
    return opened.manifest, np.concatenate(columns) if columns else np.empty(0, np.uint32)


def _recorded_version(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition: str) -> str:
    """The data version the event log holds for an input partition: for idx, its payload sha256, the
    value Dagster records as this step's provenance (looked up, not hashed again from the array)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    tags = (materialization.tags or {}) if materialization else {}
    return tags.get("dagster/data_version", "unknown")


def _split_check(split, source_rows, source_index, options) -> dg.AssetCheckResult:
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
    return dg.AssetCheckResult(
        check_name="split_sizes_and_disjointness",
        passed=not problems,
        metadata={"rows": len(rows), "source_rows": source_rows, "problems": "; ".join(problems)},
    )


def _refuse_if_failed(checks: list[dg.AssetCheckResult], message: str):
    """Blocking checks judged before anything is stored: a failure records the failed checks and
    stops the step, so the last good artifact stays in place and nothing downstream runs."""
    failed = [c for c in checks if not c.passed]
    if failed:
        yield from failed
        names = ", ".join(c.check_name or "unnamed check" for c in failed)  # ours are all named
        raise dg.Failure(f"{message} Failed checks: {names}.", metadata={"failed_checks": names})


STORAGE = "the artifact storage (MNIST_ASSETS_STORAGE, default data/artifacts)"
"""How descriptions name where artifacts live; each materialization's ``path`` entry gives the file."""
PLACES = {"metric": 4, "seconds": 2}
"""Digits kept in metadata numbers: readable in the UI, still numbers so the Plots tab draws them."""


def _picture(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md(pictures.markdown(png, alt))


def _idx_pictures(store, asset_key: dg.AssetKey, file_key: str, dataset: Dataset) -> dict[str, Any]:
    """An images partition's first examples, named by the stored labels partition when there is one
    (the labels file is another partition, materialized in its own run: before it, rows are shown)."""
    if not file_key.endswith("images"):
        return {}
    images = store.fetch(store.asset_dir(asset_key), file_key, f"{dataset.id}/idx[{file_key}]")
    labels_key = file_key.replace("images", "labels")
    labels = None
    with contextlib.suppress(StorageError):  # absent or unreadable: the picture goes without names
        labels = store.fetch(store.asset_dir(asset_key), labels_key, f"{dataset.id}/idx[{labels_key}]")
    if labels is not None and len(labels) != len(images):
        labels = None
    named = "with their class names" if labels is not None else f"by row ({labels_key} not stored yet)"
    png = pictures.sample_grid(images, labels, dataset.class_names)
    return {"samples": _picture(png, f"{dataset.id} {file_key}: the first images {named}")}


def _split_pictures(split: str, images, labels, options: shards.ShardOptions, dataset: Dataset) -> dict:
    """A split's first examples (its stored order) and its examples per class."""
    rows = shards.split_rows(split, len(labels), options)
    first = rows[: pictures.SAMPLE_COUNT]
    counts = np.bincount(labels[rows], minlength=len(dataset.class_names))
    samples = pictures.sample_grid(images[first], labels[first], dataset.class_names)
    histogram = pictures.label_histogram(counts, dataset.class_names)
    return {
        "samples": _picture(samples, f"{dataset.id} {split}: the first examples with their class names"),
        "label_histogram": _picture(histogram, f"{dataset.id} {split}: examples per class"),
    }


def _shard_files(encoded: manifest.Manifest) -> dg.TableMetadataValue:
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


def _history_table(history: dict[str, list[float]]) -> dg.TableMetadataValue:
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


def _checkpoint_metadata(model, dataset: Dataset) -> dict[str, Any]:
    """Rounded metrics (``<split>_<metric>``), the epoch history as a table, and the pictures: training
    curves, the holdout confusion matrix and the most confident holdout mistakes."""
    record, holdout, names = model.record, model.holdout, dataset.class_names
    metadata: dict[str, Any] = {
        f"{split}_{name}": round(value, PLACES["metric"])
        for split, metrics in record["metrics"].items()
        for name, value in metrics.items()
    }
    metadata |= {
        "epochs": record["epochs"],
        "training_seconds": round(record["training_seconds"], PLACES["seconds"]),
        "parameter_count": record["parameter_count"],
        "history": _history_table(model.history),
        "training_curves": _picture(
            pictures.training_curves(model.history),
            f"{dataset.id} checkpoint: loss and accuracy per epoch, train and validation",
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
            "confusion_matrix": _picture(
                matrix, f"{dataset.id} checkpoint: confusion matrix on holdout, true class by predicted class"
            ),
            "confident_mistakes": _picture(
                mistakes, f"{dataset.id} checkpoint: the most confident holdout mistakes, true → predicted"
            ),
        }
    return metadata


def dataset_assets(dataset: Dataset) -> list[dg.AssetsDefinition]:
    """The five assets of ``dataset``, keyed ``<dataset.id>/<name>`` and grouped by dataset."""
    prefix, group = [dataset.id], dataset.id

    def key(name: str) -> dg.AssetKey:
        return dg.AssetKey([dataset.id, name])

    if TYPE_CHECKING:
        # mypy cannot take a class made at runtime as an annotation; these subclasses only change the
        # fields' defaults, so their bases type the same attributes
        DatasetShardConfig: TypeAlias = ShardConfig
        DatasetTrainConfig: TypeAlias = TrainConfig
    else:  # the real classes: Dagster reads the config annotations below for the run config schema
        DatasetShardConfig = with_defaults(
            ShardConfig, dataset.shards, f"{dataset.id}_ShardConfig", f"{dataset.id}/shards"
        )
        DatasetTrainConfig = with_defaults(
            TrainConfig, dataset.training, f"{dataset.id}_TrainConfig", f"{dataset.id}/training"
        )
    mirrors = dataset.resolve_mirrors()

    @dg.observable_source_asset(
        key=key("urls"),
        group_name=group,
        partitions_def=FILES,
        description=f"{dataset.title}: each file's candidate URLs, pinned checksums and what the first "
        "answering mirror says about it now (HEAD ETag / Last-Modified / Content-Length, or the payload "
        "sha256 of a local mirror). A change to any of these makes exactly that file's raw_gzip "
        "partition stale. The daily_refresh schedule observes it; `mnist-assets refresh` does too.",
        metadata={"mirrors": dg.MetadataValue.json([redact_url(m) for m in mirrors])},
    )
    def urls(context) -> dg.DataVersionsByPartition:
        entries = {k: url_entry(dataset, k, mirrors) for k in FILE_KEYS}

        def look(k: str):
            return download.fingerprint(dataset, dataset.file(k), entries[k]["urls"])

        with ThreadPoolExecutor(len(FILE_KEYS)) as pool:
            remote = dict(zip(FILE_KEYS, pool.map(look, FILE_KEYS), strict=True))
        silent = [k for k, seen in remote.items() if seen is None]
        if silent:
            context.log.warning(
                f"{dataset.id}: no mirror answered for {', '.join(silent)}; their previous observation "
                f"stands (set {dataset.mirror_env_var} to a reachable mirror)"
            )
        return dg.DataVersionsByPartition(
            {k: json_version({**entries[k], "remote": remote[k]}) for k in FILE_KEYS if remote[k] is not None}
        )

    @versioned_asset(
        uses=(download, url_entry),
        key_prefix=prefix,
        group_name=group,
        partitions_def=FILES,
        deps=[key("urls")],
        io_manager_key="gzip_io_manager",
        required_resource_keys={"gzip_io_manager"},
        description=f"{dataset.title}: each source file as fetched, byte for byte, from the first mirror "
        "(of the urls source's list, or the run config's `mirrors`) whose decompressed payload matches the "
        f"catalog pin, streamed to storage and checked on the way. Stored as "
        f"`{dataset.id}/raw_gzip/<file>.gz` in {STORAGE}.",
        kinds={"gzip"},
    )
    def raw_gzip(context: dg.AssetExecutionContext, config: FetchConfig) -> dg.Output[Stored]:
        file = dataset.file(context.partition_key)
        chosen = dataset.resolve_mirrors(config.mirrors) if config.mirrors else mirrors
        candidates = url_entry(dataset, file.key, chosen)["urls"]
        # streamed into storage and checked on the way; kept only once it verified
        with context.resources.gzip_io_manager.staged(key("raw_gzip"), file.key) as staged:
            fetched = download.fetch_into(staged.restart, dataset, file, candidates, log=context.log)
            stored = staged.commit()
        return dg.Output(
            stored,
            data_version=dg.DataVersion(fetched.payload_sha256),
            metadata={"url": fetched.url, "payload_sha256": fetched.payload_sha256},
        )

    @versioned_asset(
        uses=(idx, _expected_kind, _refuse_if_failed, _idx_pictures, _picture, pictures),
        name="idx",
        key_prefix=prefix,
        group_name=group,
        partitions_def=FILES,
        ins={"raw": dg.AssetIn(key("raw_gzip"))},
        io_manager_key="npy_io_manager",
        required_resource_keys={"npy_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "header_shape_dtype_agree",
                asset=key("idx"),
                blocking=True,
                description="The IDX header's dtype and shape are what the file's role needs: uint8 "
                f"images (n, {', '.join(map(str, dataset.image_shape))}) or uint8 labels (n,). Judged "
                "before the array is stored.",
            ),
            dg.AssetCheckSpec(
                "labels_in_class_range",
                asset=key("idx"),
                blocking=True,
                description="Every label indexes the catalog's class_names (image files pass as not "
                "applicable). Judged before the array is stored.",
            ),
        ],
        description=f"{dataset.title}: the IDX payload of the raw_gzip partition, decompressed and parsed "
        "to a numpy array (images partitions show their first images in `samples`). Stored as "
        f"`{dataset.id}/idx/<file>.npy` in {STORAGE}, loaded memory-mapped and without pickle.",
        kinds={"numpy"},
    )
    def idx_arrays(context: dg.AssetExecutionContext, raw: dict[str, Any]):  # bytes or a read-only mmap
        file_key = context.partition_key
        file = dataset.file(file_key)
        # streamed into the stored .npy (memory does not grow with the file); checked before it is kept
        with context.resources.npy_io_manager.staged(key("idx"), file_key, file.payload_size) as staged:
            try:
                parsed = idx.gunzip_to_npy(raw[file_key], staged.file, max_bytes=file.payload_size)
            except idx.IdxError as error:
                raise dg.Failure(
                    f"{dataset.id}: {file_key} ({file.filename}) is not a usable IDX file: {error}. "
                    "The previous idx array, if any, is kept. What to do: check the catalog pin and the "
                    f"mirror's copy ({dataset.mirror_env_var}), then materialize raw_gzip[{file_key}] again."
                ) from None
            ndim, trailing = _expected_kind(file_key, dataset)
            problems = []
            if parsed.dtype != np.uint8 or len(parsed.shape) != ndim or parsed.shape[1:] != trailing:
                problems.append(f"{file_key} must be uint8 with {ndim} dims, trailing shape {trailing}")
            is_labels = file_key.endswith("labels")
            top = int(parsed.maximum) if is_labels else 0
            checks = [
                dg.AssetCheckResult(
                    check_name="header_shape_dtype_agree",
                    passed=not problems,
                    metadata={
                        "shape": str(parsed.shape),
                        "dtype": str(parsed.dtype),
                        "problems": "; ".join(problems),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="labels_in_class_range",
                    passed=top < len(dataset.class_names),
                    metadata={"applies": "yes" if is_labels else "no (image file)", "max_label": top},
                ),
            ]
            yield from _refuse_if_failed(
                checks,
                f"{dataset.id}: idx[{file_key}] ({file.filename}) was not stored; the previous array is "
                "kept. What to do: fix the catalog entry (class_names, file pins) or the mirror, then "
                "materialize again.",
            )
            stored = staged.commit()
        yield dg.Output(
            stored,
            data_version=dg.DataVersion(parsed.payload_sha256),
            metadata={
                "dagster/row_count": parsed.shape[0] if parsed.shape else 1,
                "shape": str(parsed.shape),
                "dtype": str(parsed.dtype),
                "payload_sha256": parsed.payload_sha256,
                **_idx_pictures(context.resources.npy_io_manager, key("idx"), file_key, dataset),
            },
        )
        yield from checks

    @versioned_asset(
        uses=(
            shards,
            manifest,
            _read_back,
            _split_check,
            _recorded_version,
            _split_pictures,
            _shard_files,
            _picture,
            pictures,
            DatasetShardConfig().model_dump(),
        ),
        name="shards",
        key_prefix=prefix,
        group_name=group,
        partitions_def=SPLITS,
        ins={"arrays": dg.AssetIn(key("idx"), partition_mapping=FILES_TO_SPLITS)},
        io_manager_key="shards_io_manager",
        required_resource_keys={"shards_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "manifest_matches_files",
                asset=key("shards"),
                blocking=True,
                description="The committed manifest, read back from storage, names the shards just "
                "written (same root hash) and every shard matches its sha256.",
            ),
            dg.AssetCheckSpec(
                "split_sizes_and_disjointness",
                asset=key("shards"),
                blocking=True,
                description="The stored rows are exactly this split of the seeded permutation: no row "
                "twice, train and test disjoint and together the whole official train file.",
            ),
        ],
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
        split = context.partition_key
        images_key, labels_key = shards.SPLIT_SOURCES[split]
        images, labels = arrays[images_key], arrays[labels_key]  # memory-mapped: read one shard at a time
        sources = {k: _recorded_version(context, key("idx"), k) for k in (images_key, labels_key)}
        store = context.resources.shards_io_manager
        written: list[manifest.Manifest] = []

        def write(put):
            written.append(
                shards.write(
                    dataset.id, split, images, labels, sources, dataset.class_names, config.options(), put
                )
            )
            return written[0]

        # each Parquet file is committed as soon as it is encoded, the manifest last
        stored = store.commit(context.assets_def.key, split, write)
        encoded = written[0]
        yield dg.Output(
            stored,
            data_version=dg.DataVersion(encoded.root_sha256),
            metadata={
                "dagster/column_schema": dg.TableSchema(
                    columns=[
                        dg.TableColumn(c.name, c.type, description=c.description) for c in encoded.columns
                    ]
                ),
                "dagster/row_count": encoded.rows,
                "shard_files": _shard_files(encoded),
                **_split_pictures(split, images, labels, config.options(), dataset),
            },
        )
        # read back what was committed: checks see the stored files, not our memory
        committed, source_index = _read_back(
            store, context.assets_def.key, split, f"{dataset.id}/shards[{split}]"
        )
        yield dg.AssetCheckResult(
            check_name="manifest_matches_files",
            passed=committed.root_sha256 == encoded.root_sha256 and len(source_index) == encoded.rows,
            metadata={"root_sha256": committed.root_sha256, "shards": len(committed.shards)},
        )
        yield _split_check(split, len(labels), source_index, config.options())

    @versioned_asset(
        uses=(
            "mnist_assets.training",
            loader,
            _refuse_if_failed,
            _checkpoint_metadata,
            _history_table,
            _picture,
            pictures,
            DatasetTrainConfig().model_dump(),
        ),
        key_prefix=prefix,
        group_name=group,
        deps=[key("shards")],  # read by streaming loaders over the committed shards, not loaded whole
        io_manager_key="keras_io_manager",
        required_resource_keys={"shards_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "holdout_accuracy_above_floor",
                asset=key("checkpoint"),
                blocking=True,
                description="Holdout accuracy of the trained model is at least the run's accuracy_floor; "
                "below it the model is not stored and the last good checkpoint stays.",
            )
        ],
        description=f"{dataset.title}: a tf.keras CNN trained on the train shards, validated on test "
        "each epoch, evaluated once on holdout (metrics, epoch history, training curves, holdout "
        "confusion matrix and most confident mistakes in the metadata). Stored as "
        f"`{dataset.id}/checkpoint/model-<sha256>.keras` in {STORAGE}, committed by `checkpoint.json` "
        "(metrics, config and the shard root hashes it was trained on).",
        kinds={"tensorflow", "keras"},
    )
    def checkpoint(context: dg.AssetExecutionContext, config: DatasetTrainConfig):
        from mnist_assets import training  # TensorFlow loads only when a model is trained

        store = context.resources.shards_io_manager
        with contextlib.ExitStack() as stack:
            splits = {
                split: stack.enter_context(
                    loader.open_split(
                        store,
                        dataset.id,
                        split,
                        batch_size=config.batch_size,
                        # train reshuffled every epoch; test and holdout read in order
                        seed=config.seed if split == "train" else None,
                        epochs=None,
                    )
                )
                for split in shards.SPLITS
            }
            model = training.train(splits, len(dataset.class_names), config, log=context.log)
        record = {
            **model.record,
            "config": config.model_dump(),
            "shards_root_sha256": {k: v.manifest.root_sha256 for k, v in splits.items()},
        }
        model = training.TrainedModel(model.keras_bytes, record, model.history, model.holdout)
        accuracy = record["metrics"]["holdout"]["accuracy"]
        floor = dg.AssetCheckResult(
            check_name="holdout_accuracy_above_floor",
            passed=accuracy >= config.accuracy_floor,
            metadata={
                "holdout_accuracy": round(accuracy, PLACES["metric"]),
                "floor": config.accuracy_floor,
            },
        )
        yield from _refuse_if_failed(
            [floor],
            f"{dataset.id}: the trained model reached holdout accuracy {accuracy:.4f}, below the floor "
            f"{config.accuracy_floor}; it was not stored and the last good checkpoint is kept. What to do: "
            "train longer (epochs), change the model settings, or lower accuracy_floor in the run config.",
        )
        yield dg.Output(
            model,
            data_version=dg.DataVersion(idx.sha256(model.keras_bytes)),
            metadata=_checkpoint_metadata(model, dataset),
        )
        yield floor

    return [urls, raw_gzip, idx_arrays, shard_sets, checkpoint]


def materialization_steps() -> list[tuple[tuple[str, ...], str | None]]:
    """(asset names, partition) runs that build a dataset's whole graph, upstream first.

    One run per partition, because a run's data version applies to every partition it writes;
    the README's CLI commands are these same steps.
    """
    return [
        *((("raw_gzip", "idx"), key) for key in FILES.get_partition_keys()),
        *((("shards",), split) for split in shards.SPLITS),
        (("checkpoint",), None),
    ]
