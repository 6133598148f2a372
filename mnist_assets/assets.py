"""The asset graph of one dataset: urls → raw_gzip → idx → shards → checkpoint[model] → best_model.

Every dataset gets the same graph, built from its catalog entry, under its own key prefix and group.
Each layer's work is a module-level function over plain values (a dataset, a partition key, arrays, a
store), callable in a test without Dagster; the ``*_asset`` factories below only wire it into Dagster
(keys, partitions, checks, descriptions). Each asset returns a content data version, so an identical
result leaves downstream assets fresh, and carries a code version hashed from the code that computes it
(its body function and the helpers it ``uses``).
"""

import contextlib
import dataclasses
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pydantic
from pydantic import Field

from mnist_assets import download, idx, loader, manifest, metadata, models, pictures, shards
from mnist_assets.catalog import FILE_KEYS, CatalogError, Dataset, explain, redact_url
from mnist_assets.hashing import code_version, json_version, sha256
from mnist_assets.manifest import CheckpointRecord
from mnist_assets.models import TrainConfig, TrainOverrides
from mnist_assets.rebuild import attempts
from mnist_assets.settings import DEFAULT_STORAGE
from mnist_assets.settings import STORAGE as STORAGE_VARIABLE
from mnist_assets.storage import leases
from mnist_assets.storage.backends import Stored
from mnist_assets.storage.faults import REPAIR, StorageError
from mnist_assets.tags import COLUMN_SCHEMA, DATA_VERSION, OBSERVED_DAILY, ROW_COUNT, TOLERATES_FAILED_INPUTS

if TYPE_CHECKING:
    from mnist_assets.training import TrainedModel

__all__ = ["TrainConfig", "dataset_assets", "materialization_steps"]

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

    @pydantic.model_validator(mode="after")
    def _valid(self) -> Self:
        """Refused where it is written (catalog, launchpad), by ``ShardOptions``' own rules."""
        self.options()
        return self


ConfigT = TypeVar("ConfigT", bound=dg.Config)


def with_defaults(
    base: type[ConfigT], overrides: dict, name: str, dataset_id: str, key: str
) -> type[ConfigT]:
    """``base`` with the catalog's per-dataset defaults (``key`` of the dataset's entry), so the launchpad
    and the code version see them."""
    unknown = sorted(set(overrides) - set(base.model_fields))
    if unknown:
        raise CatalogError(
            f"not a key here; allowed keys: {', '.join(sorted(base.model_fields))}",
            dataset_id,
            f"{key}/{unknown[0]}",
        )
    try:  # the values too, by the settings' own rules, naming the key they are written under
        base(**overrides)
    except pydantic.ValidationError as error:
        raise explain(dataset_id, error, overrides, (key,)) from None
    # Any: mypy matches ``**fields`` against every keyword of create_model (``__base__``, ``__config__``,
    # ...), so typed as the (annotation, Field) pairs they are, the call would not type-check
    fields: dict[str, Any] = {
        k: (base.model_fields[k].annotation, Field(default=v, description=base.model_fields[k].description))
        for k, v in overrides.items()
    }
    return pydantic.create_model(name, __base__=base, **fields) if fields else base


def versioned_asset(uses: tuple = (), **kwargs):
    """``dg.asset`` whose code version hashes the function's own source plus what it ``uses``
    (modules, helpers, settings dicts): editing any of them makes the asset stale. Its step runs under
    the partition's lease (:func:`leases.shared_step`): work another process is doing is waited for
    and reused, not repeated; the asset's IO manager says where the lease lives."""

    def wrap(fn):
        store = kwargs["io_manager_key"]
        settings = {**kwargs, "required_resource_keys": {*kwargs.get("required_resource_keys", ()), store}}
        return dg.asset(code_version=code_version(fn, *uses), **settings)(leases.shared_step(fn, store))

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


def expected_kind(key: str, dataset: Dataset) -> tuple[int, tuple[int, ...]]:
    """(ndim, trailing shape) an IDX file of this partition must have."""
    return (3, dataset.image_shape) if key.endswith("images") else (1, ())


def read_back(store, asset_key: dg.AssetKey, split: str, what: str) -> tuple[manifest.Manifest, np.ndarray]:
    """The committed manifest of ``split`` and its ``source_index`` column, one shard at a time, each
    shard verified against its manifest sha256 (a damaged one fails the step)."""
    opened = store.open(asset_key, split)
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


def recorded_version(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition: str) -> str:
    """The data version the event log holds for an input partition: for idx, its payload sha256, the
    value Dagster records as this step's provenance (looked up, not hashed again from the array)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
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
    return dg.AssetCheckResult(
        check_name="split_sizes_and_disjointness",
        passed=not problems,
        metadata={"rows": len(rows), "source_rows": source_rows, "problems": "; ".join(problems)},
    )


def refuse_if_failed(checks: list[dg.AssetCheckResult], message: str):
    """Blocking checks judged before anything is stored: a failure records the failed checks and
    stops the step, so the last good artifact stays in place and nothing downstream runs."""
    failed = [c for c in checks if not c.passed]
    if failed:
        yield from failed
        names = ", ".join(c.check_name or "unnamed check" for c in failed)  # ours are all named
        # a check that can say what is wrong in the user's terms (a "problem" entry) leads the message
        problems = [str(c.metadata["problem"].value) for c in failed if "problem" in c.metadata]
        lead = "".join(f"{p}. " for p in problems)
        raise dg.Failure(f"{lead}{message} Failed checks: {names}.", metadata={"failed_checks": names})


STORAGE = f"the artifact storage ({STORAGE_VARIABLE}, default {DEFAULT_STORAGE})"
"""How descriptions name where artifacts live; each materialization's ``path`` entry gives the file."""


# --- the layers' work, over plain values -----------------------------------------------------------


def observe_urls(dataset: Dataset, mirrors: list[str], log) -> dict[str, str]:
    """Each file's data version: its candidate URLs, pins and what the first answering mirror says about
    it now. A file no mirror answered for is left out, so its previous observation stands."""
    entries = {k: url_entry(dataset, k, mirrors) for k in FILE_KEYS}

    def look(k: str):
        return download.fingerprint(dataset, dataset.file(k), entries[k]["urls"])

    with ThreadPoolExecutor(len(FILE_KEYS)) as pool:
        remote = dict(zip(FILE_KEYS, pool.map(look, FILE_KEYS), strict=True))
    silent = [k for k, seen in remote.items() if seen is None]
    if silent:
        log.warning(
            f"{dataset.id}: no mirror answered for {', '.join(silent)}; their previous observation "
            f"stands (set {dataset.mirror_env_var} to a reachable mirror)"
        )
    return {k: json_version({**entries[k], "remote": remote[k]}) for k in FILE_KEYS if remote[k] is not None}


def fetch_raw_gzip(
    dataset: Dataset, file_key: str, mirrors: list[str], staged, log
) -> tuple[download.Fetched, Stored]:
    """Stream the first mirror's copy whose content verifies into ``staged``, then commit it."""
    urls = url_entry(dataset, file_key, mirrors)["urls"]
    fetched = download.fetch_into(staged.restart, dataset, dataset.file(file_key), urls, log=log)
    return fetched, staged.commit()


def parse_idx(dataset: Dataset, file_key: str, raw, sink) -> tuple[idx.Parsed, list[dg.AssetCheckResult]]:
    """The gzipped IDX file ``raw`` written to ``sink`` as ``.npy``, and the blocking checks of what it
    holds (judged by the caller before the file is kept)."""
    file = dataset.file(file_key)
    try:
        parsed = idx.gunzip_to_npy(raw, sink, max_bytes=file.payload_size)
    except idx.IdxError as error:
        raise dg.Failure(
            f"{dataset.id}: {file_key} ({file.filename}) is not a usable IDX file: {error}. "
            "The previous idx array, if any, is kept. What to do: check the catalog pin and the "
            f"mirror's copy ({dataset.mirror_env_var}), then materialize raw_gzip[{file_key}] again."
        ) from None
    shape_problem = header_problem(dataset, file_key, parsed)
    is_labels = file_key.endswith("labels")
    top = int(parsed.maximum) if is_labels else 0
    names = len(dataset.class_names)
    label_problem = f"{dataset.id}/class_names: labels reach {top}, class_names has {names} names"
    return parsed, [
        dg.AssetCheckResult(
            check_name="header_shape_dtype_agree",
            passed=shape_problem is None,
            metadata={
                "shape": str(parsed.shape),
                "dtype": str(parsed.dtype),
                **({"problem": shape_problem} if shape_problem else {}),
            },
        ),
        dg.AssetCheckResult(
            check_name="labels_in_class_range",
            passed=top < names,
            metadata={
                "applies": "yes" if is_labels else "no (image file)",
                "max_label": top,
                **({"problem": label_problem} if top >= names else {}),
            },
        ),
    ]


def header_problem(dataset: Dataset, file_key: str, parsed: idx.Parsed) -> str | None:
    """What is wrong with the IDX header for this file's role, in catalog terms, or None. A wrong
    ``image_shape`` is the likeliest cause in a freshly added entry, so that case names the key."""
    ndim, trailing = expected_kind(file_key, dataset)
    if parsed.dtype == np.uint8 and len(parsed.shape) == ndim and parsed.shape[1:] == trailing:
        return None
    if parsed.dtype == np.uint8 and ndim == 3 and len(parsed.shape) == 3:
        h, w = parsed.shape[1:]
        return (
            f"{dataset.id}/image_shape: the catalog says {list(trailing)}, {file_key} holds {h}×{w} "
            f'images: set "image_shape": [{h}, {w}]'
        )
    role = f"uint8 images (n, {', '.join(map(str, trailing))})" if ndim == 3 else "uint8 labels (n,)"
    return (
        f"{dataset.id}/files/{file_key}: the file holds {parsed.dtype} of shape {tuple(parsed.shape)}, "
        f"{role} expected: check the file's pins and its mirror"
    )


def cut_split(
    dataset: Dataset,
    split: str,
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
    asset_key: dg.AssetKey,
    split: str,
    encoded: manifest.Manifest,
    source_rows: int,
    options,
    what: str,
) -> list[dg.AssetCheckResult]:
    """The checks of a committed split, read back from storage: checks see the stored files, not memory."""
    committed, source_index = read_back(store, asset_key, split, what)
    return [
        dg.AssetCheckResult(
            check_name="manifest_matches_files",
            passed=committed.root_sha256 == encoded.root_sha256 and len(source_index) == encoded.rows,
            metadata={"root_sha256": committed.root_sha256, "shards": len(committed.shards)},
        ),
        split_check(split, source_rows, source_index, options),
    ]


def train_checkpoint(dataset: Dataset, config: TrainConfig, store, log) -> "TrainedModel":
    """A model trained on the committed train shards, validated on test each epoch, evaluated on every
    split once; its record names the settings and the shard sets it was trained on."""
    from mnist_assets import training  # TensorFlow loads only when a model is trained

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
        model = training.train(splits, len(dataset.class_names), config, log=log)
    record = {
        **model.record,
        "config": config.model_dump(),
        "shards_root_sha256": {k: v.manifest.root_sha256 for k, v in splits.items()},
    }
    return dataclasses.replace(model, record=record)


def floor_check(model: "TrainedModel", config: TrainConfig) -> dg.AssetCheckResult:
    accuracy = model.record["metrics"]["holdout"]["accuracy"]
    return dg.AssetCheckResult(
        check_name="holdout_accuracy_above_floor",
        passed=accuracy >= config.accuracy_floor,
        metadata={
            "holdout_accuracy": round(accuracy, metadata.PLACES["metric"]),
            "floor": config.accuracy_floor,
        },
    )


def candidates(
    names: list[str], store, checkpoint_key: dg.AssetKey, last_failure: Callable[[str], str | None]
) -> tuple[dict[str, models.Entry], dict[str, str]]:
    """Each configuration's stored checkpoint record (read, not the model), or why it cannot compete;
    and each stored checkpoint's path. A configuration whose last attempt failed does not compete: its
    stored checkpoint, if any, is not of what the catalog now asks for."""
    entries: dict[str, models.Entry] = {}
    paths: dict[str, str] = {}
    for name in names:
        if failure := last_failure(name):
            entries[name] = f"not competing: {failure}"
        elif not store.exists(checkpoint_key, name):
            entries[name] = f"not competing: no checkpoint stored (materialize checkpoint[{name}])"
        else:
            location = store.location(checkpoint_key, name)
            try:
                record = CheckpointRecord.model_validate_json(location.read_bytes())
            except (ValueError, OSError) as error:
                entries[name] = f"not competing: {location} is unreadable ({error}); {REPAIR}"
                continue
            entries[name], paths[name] = record, str(location.parent / record.file)
    return entries, paths


def choose_best(
    dataset: Dataset, entries: dict[str, models.Entry], paths: dict[str, str]
) -> models.BestModelRecord:
    """The ranking, or a dg.Failure saying why there is no winner and what to do."""
    try:
        return models.rank(dataset.id, entries, paths)
    except models.NoCandidate as error:
        raise dg.Failure(
            f"{error}. The previous best_model, if any, is kept. What to do: materialize the checkpoint "
            "partitions (`mnist-assets refresh`) and fix the failures named."
        ) from None


# --- wiring: one factory per asset ---------------------------------------------------------------


def _key(dataset: Dataset, name: str) -> dg.AssetKey:
    return dg.AssetKey([dataset.id, name])


def urls_asset(dataset: Dataset, mirrors: list[str]) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=_key(dataset, "urls"),
        group_name=dataset.id,
        partitions_def=FILES,
        description=f"{dataset.title}: each file's candidate URLs, pinned checksums and what the first "
        "answering mirror says about it now (HEAD ETag / Last-Modified / Content-Length, or the payload "
        "sha256 of a local mirror). A change to any of these makes exactly that file's raw_gzip "
        "partition stale. The daily_refresh schedule observes it; `mnist-assets refresh` does too.",
        metadata={"mirrors": dg.MetadataValue.json([redact_url(m) for m in mirrors])},
        tags={OBSERVED_DAILY: "true"},
    )
    def urls(context) -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(observe_urls(dataset, mirrors, context.log))

    return urls


def raw_gzip_asset(dataset: Dataset, mirrors: list[str]) -> dg.AssetsDefinition:
    key = _key(dataset, "raw_gzip")

    @versioned_asset(
        uses=(download, url_entry, fetch_raw_gzip),
        key=key,
        group_name=dataset.id,
        partitions_def=FILES,
        deps=[_key(dataset, "urls")],
        io_manager_key="gzip_io_manager",
        required_resource_keys={"gzip_io_manager"},
        description=f"{dataset.title}: each source file as fetched, byte for byte, from the first mirror "
        "(of the urls source's list, or the run config's `mirrors`) whose decompressed payload matches the "
        f"catalog pin, streamed to storage and checked on the way. Stored as "
        f"`{dataset.id}/raw_gzip/<file>.gz` in {STORAGE}.",
        kinds={"gzip"},
    )
    def raw_gzip(context: dg.AssetExecutionContext, config: FetchConfig) -> dg.Output[Stored]:
        chosen = dataset.resolve_mirrors(config.mirrors) if config.mirrors else mirrors
        # streamed into storage and checked on the way; kept only once it verified
        with context.resources.gzip_io_manager.staged(key, context.partition_key) as staged:
            fetched, stored = fetch_raw_gzip(dataset, context.partition_key, chosen, staged, context.log)
        return dg.Output(
            stored,
            data_version=dg.DataVersion(fetched.payload_sha256),
            metadata={"url": fetched.url, "payload_sha256": fetched.payload_sha256},
        )

    return raw_gzip


def idx_asset(dataset: Dataset) -> dg.AssetsDefinition:
    key = _key(dataset, "idx")

    @versioned_asset(
        uses=(
            idx,
            parse_idx,
            header_problem,
            expected_kind,
            refuse_if_failed,
            metadata.idx_pictures,
            metadata.picture,
            pictures,
        ),
        key=key,
        group_name=dataset.id,
        partitions_def=FILES,
        ins={"raw": dg.AssetIn(_key(dataset, "raw_gzip"))},
        io_manager_key="npy_io_manager",
        required_resource_keys={"npy_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "header_shape_dtype_agree",
                asset=key,
                blocking=True,
                description="The IDX header's dtype and shape are what the file's role needs: uint8 "
                f"images (n, {', '.join(map(str, dataset.image_shape))}) or uint8 labels (n,). Judged "
                "before the array is stored.",
            ),
            dg.AssetCheckSpec(
                "labels_in_class_range",
                asset=key,
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
        store = context.resources.npy_io_manager
        # streamed into the stored .npy (memory does not grow with the file); checked before it is kept
        with store.staged(key, file_key, dataset.file(file_key).payload_size) as staged:
            parsed, checks = parse_idx(dataset, file_key, raw[file_key], staged.file)
            yield from refuse_if_failed(
                checks,
                f"{dataset.id}: idx[{file_key}] ({dataset.file(file_key).filename}) was not stored; the "
                "previous array is kept. What to do: fix the catalog entry (class_names, file pins) or the "
                "mirror, then materialize again.",
            )
            stored = staged.commit()
        yield dg.Output(
            stored,
            data_version=dg.DataVersion(parsed.payload_sha256),
            metadata={
                ROW_COUNT: parsed.shape[0] if parsed.shape else 1,
                "shape": str(parsed.shape),
                "dtype": str(parsed.dtype),
                "payload_sha256": parsed.payload_sha256,
                **metadata.idx_pictures(store, key, file_key, dataset),
            },
        )
        yield from checks

    return idx_arrays


def shards_asset(dataset: Dataset) -> dg.AssetsDefinition:
    key = _key(dataset, "shards")
    if TYPE_CHECKING:
        # mypy cannot take a class made at runtime as an annotation; this subclass only changes the
        # fields' defaults, so its base types the same attributes
        DatasetShardConfig: TypeAlias = ShardConfig
    else:  # the real class: Dagster reads the config annotation below for the run config schema
        DatasetShardConfig = with_defaults(
            ShardConfig, dataset.shards, f"{dataset.id}_ShardConfig", dataset.id, "shards"
        )

    @versioned_asset(
        uses=(
            shards,
            manifest,
            cut_split,
            check_committed_split,
            read_back,
            split_check,
            recorded_version,
            metadata.split_pictures,
            metadata.shard_files,
            metadata.picture,
            pictures,
            DatasetShardConfig().model_dump(),
        ),
        key=key,
        group_name=dataset.id,
        partitions_def=SPLITS,
        ins={"arrays": dg.AssetIn(_key(dataset, "idx"), partition_mapping=FILES_TO_SPLITS)},
        io_manager_key="shards_io_manager",
        required_resource_keys={"shards_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "manifest_matches_files",
                asset=key,
                blocking=True,
                description="The committed manifest, read back from storage, names the shards just "
                "written (same root hash) and every shard matches its sha256.",
            ),
            dg.AssetCheckSpec(
                "split_sizes_and_disjointness",
                asset=key,
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
        split, options = context.partition_key, config.options()
        images_key, labels_key = shards.SPLIT_SOURCES[split]
        sources = {k: recorded_version(context, _key(dataset, "idx"), k) for k in (images_key, labels_key)}
        store = context.resources.shards_io_manager

        def commit(write):
            return store.commit(key, split, write)

        stored, encoded = cut_split(dataset, split, arrays, sources, options, commit)
        yield dg.Output(
            stored,
            data_version=dg.DataVersion(encoded.root_sha256),
            metadata={
                COLUMN_SCHEMA: dg.TableSchema(
                    columns=[
                        dg.TableColumn(c.name, c.type, description=c.description) for c in encoded.columns
                    ]
                ),
                ROW_COUNT: encoded.rows,
                "shard_files": metadata.shard_files(encoded),
                **metadata.split_pictures(split, arrays[images_key], arrays[labels_key], options, dataset),
            },
        )
        source_rows, what = len(arrays[labels_key]), f"{dataset.id}/shards[{split}]"
        yield from check_committed_split(store, key, split, encoded, source_rows, options, what)

    return shard_sets


def model_configs_asset(dataset: Dataset, configs: dict[str, TrainConfig]) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=_key(dataset, "model_configs"),
        group_name=dataset.id,
        partitions_def=dg.StaticPartitionsDefinition(list(configs)),
        description=f"{dataset.title}: each named training configuration of the catalog entry (`models`, "
        "on top of `training`, on top of TrainConfig's defaults), resolved. A change to one makes exactly "
        "its checkpoint partition stale; a new one is a new partition, built alone.",
        metadata={"configs": dg.MetadataValue.json({n: c.model_dump() for n, c in configs.items()})},
    )
    def model_configs(context) -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition({n: models.config_version(c) for n, c in configs.items()})

    return model_configs


def checkpoint_asset(dataset: Dataset, configs: dict[str, TrainConfig]) -> dg.AssetsDefinition:
    key = _key(dataset, "checkpoint")

    @versioned_asset(
        # code only: each configuration's settings reach it as model_configs' data version per partition
        uses=(
            "mnist_assets.training",
            loader,
            train_checkpoint,
            floor_check,
            models.with_overrides,
            refuse_if_failed,
            metadata.checkpoint_metadata,
            metadata.history_table,
            metadata.picture,
            pictures,
        ),
        key=key,
        group_name=dataset.id,
        partitions_def=dg.StaticPartitionsDefinition(list(configs)),
        deps=[
            # every split, read by streaming loaders over the committed shards, not loaded whole
            dg.AssetDep(_key(dataset, "shards"), partition_mapping=dg.AllPartitionMapping()),
            _key(dataset, "model_configs"),
        ],
        io_manager_key="keras_io_manager",
        required_resource_keys={"shards_io_manager"},
        check_specs=[
            dg.AssetCheckSpec(
                "holdout_accuracy_above_floor",
                asset=key,
                blocking=True,
                description="Holdout accuracy of the trained model is at least the configuration's "
                "accuracy_floor; below it the model is not stored and the last good checkpoint stays.",
            )
        ],
        description=f"{dataset.title}: one tf.keras CNN per training configuration (the partition, a "
        "name in the catalog's `models`), trained on the train shards, validated on test each epoch, "
        "evaluated once on holdout (metrics, epoch history, training curves, holdout confusion matrix and "
        "most confident mistakes in the metadata). Stored as "
        f"`{dataset.id}/checkpoint/<model>/model-<sha256>.keras` in {STORAGE}, committed by "
        "`checkpoint.json` (metrics, config and the shard root hashes it was trained on).",
        kinds={"tensorflow", "keras"},
    )
    def checkpoint(context: dg.AssetExecutionContext, config: TrainOverrides):
        name = context.partition_key
        resolved = models.with_overrides(configs[name], config)
        model = train_checkpoint(dataset, resolved, context.resources.shards_io_manager, context.log)
        floor = floor_check(model, resolved)
        accuracy = model.record["metrics"]["holdout"]["accuracy"]
        yield from refuse_if_failed(
            [floor],
            f"{dataset.id}: checkpoint[{name}] reached holdout accuracy {accuracy:.4f}, below the floor "
            f"{resolved.accuracy_floor}; it was not stored and the last good checkpoint is kept. What to "
            f"do: train longer (epochs), change the settings of models/{name} in the catalog, or lower "
            "accuracy_floor in the run config.",
        )
        yield dg.Output(
            model,
            data_version=dg.DataVersion(sha256(model.keras_bytes)),
            metadata={"model": name, **metadata.checkpoint_metadata(model, dataset, name)},
        )
        yield floor

    return checkpoint


def best_model_asset(dataset: Dataset) -> dg.AssetsDefinition:
    checkpoint_key = _key(dataset, "checkpoint")

    @versioned_asset(
        uses=("mnist_assets.models", candidates, choose_best, metadata.ranking_table),
        key=_key(dataset, "best_model"),
        group_name=dataset.id,
        deps=[dg.AssetDep(checkpoint_key, partition_mapping=dg.AllPartitionMapping())],
        io_manager_key="json_io_manager",
        required_resource_keys={"keras_io_manager"},
        # one configuration failing must not keep the others from being promoted
        tags={TOLERATES_FAILED_INPUTS: "true"},
        description=f"{dataset.title}: which configuration's checkpoint is promoted: the highest "
        "validation accuracy (the test split; ties: fewer parameters, then name). Holdout accuracy is "
        "reported, never used to choose. A configuration never built or whose last attempt failed is "
        f"listed as not competing, with the reason. Stored as `{dataset.id}/best_model/record.json` in "
        f'{STORAGE}; load the winner with `mnist_assets.load_model("{dataset.id}")`. Its data version '
        "changes only when the winner or its checkpoint does.",
        kinds={"json"},
    )
    def best_model(context: dg.AssetExecutionContext) -> dg.Output[models.BestModelRecord]:
        def failure_of(name: str) -> str | None:
            failure = attempts.last_failure(context.instance, checkpoint_key, name)
            return failure.describe() if failure else None

        store = context.resources.keras_io_manager
        entries, paths = candidates(dataset.model_names, store, checkpoint_key, failure_of)
        record = choose_best(dataset, entries, paths)
        winner = record.ranking[0]
        return dg.Output(
            record,
            data_version=dg.DataVersion(record.data_version),
            metadata={
                "winner": record.winner,
                "validation_accuracy": round(winner.validation_accuracy, metadata.PLACES["metric"]),
                "holdout_accuracy": round(winner.metrics["holdout"]["accuracy"], metadata.PLACES["metric"]),
                "checkpoint_path": dg.MetadataValue.path(record.checkpoint_file),
                "ranking": metadata.ranking_table(record),
                "chosen_by": record.chosen_by,
            },
        )

    return best_model


def dataset_assets(dataset: Dataset) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """The assets of ``dataset``, keyed ``<dataset.id>/<name>`` and grouped by dataset."""
    mirrors, configs = dataset.resolve_mirrors(), models.training_configs(dataset)
    return [
        urls_asset(dataset, mirrors),
        raw_gzip_asset(dataset, mirrors),
        idx_asset(dataset),
        shards_asset(dataset),
        model_configs_asset(dataset, configs),
        checkpoint_asset(dataset, configs),
        best_model_asset(dataset),
    ]


def materialization_steps(dataset: Dataset) -> list[tuple[tuple[str, ...], str | None]]:
    """(asset names, partition) runs that build a dataset's whole graph, upstream first.

    One run per partition, because a run's data version applies to every partition it writes;
    the README's CLI commands are these same steps.
    """
    return [
        *((("raw_gzip", "idx"), key) for key in FILES.get_partition_keys()),
        *((("shards",), split) for split in shards.SPLITS),
        *((("checkpoint",), name) for name in dataset.model_names),
        (("best_model",), None),
    ]
