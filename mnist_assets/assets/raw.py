"""The raw stage: urls (what the mirrors say) → raw_gzip (the file as fetched) → idx (its array).

The work is plain functions over a dataset, a partition key and a store, callable without Dagster;
the ``*_asset`` factories wire it into Dagster.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

import mnist_assets.assets.metadata as metadata
import mnist_assets.assets.pictures as pictures
from mnist_assets import download, idx
from mnist_assets.assets.common import (
    FILES,
    STORAGE,
    BlockingCheck,
    Judgement,
    asset_key,
    refuse_if_failed,
    versioned_asset,
)
from mnist_assets.catalog import FILE_KEYS, Dataset, redact_url
from mnist_assets.hashing import json_version
from mnist_assets.storage.backends import Stored
from mnist_assets.tags import OBSERVED_DAILY, ROW_COUNT


class FetchConfig(dg.Config):
    mirrors: list[str] = Field(
        default_factory=list,
        description="Mirror base URLs or local directories to use instead of the catalog's list "
        "(the MNIST_ASSETS_MIRROR_<DATASET> environment variable does the same).",
    )


HEADER_CHECK = BlockingCheck(
    "header_shape_dtype_agree",
    "The IDX header's dtype and shape are what the file's role needs: uint8 images (n, *image_shape of "
    "the catalog) or uint8 labels (n,). Judged before the array is stored.",
)
LABELS_CHECK = BlockingCheck(
    "labels_in_class_range",
    "Every label indexes the catalog's class_names (image files pass as not applicable). Judged before "
    "the array is stored.",
)


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
    return parsed, [header_check(dataset, file_key, parsed), labels_check(dataset, file_key, parsed)]


def header_check(dataset: Dataset, file_key: str, parsed: idx.Parsed) -> dg.AssetCheckResult:
    problem = header_problem(dataset, file_key, parsed)
    return HEADER_CHECK.result(
        problem is None,
        {
            "shape": str(parsed.shape),
            "dtype": str(parsed.dtype),
            **({"problem": problem} if problem else {}),
        },
    )


def labels_check(dataset: Dataset, file_key: str, parsed: idx.Parsed) -> dg.AssetCheckResult:
    is_labels = file_key.endswith("labels")
    top = int(parsed.maximum) if is_labels else 0
    names = len(dataset.class_names)
    problem = f"{dataset.id}/class_names: labels reach {top}, class_names has {names} names"
    return LABELS_CHECK.result(
        top < names,
        {
            "applies": "yes" if is_labels else "no (image file)",
            "max_label": top,
            **({"problem": problem} if top >= names else {}),
        },
    )


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


# --- wiring: one factory per asset ---------------------------------------------------------------


def urls_asset(dataset: Dataset, mirrors: list[str]) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=asset_key(dataset, "urls"),
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


def raw_gzip_asset(dataset: Dataset, mirrors: list[str], judgement: Judgement) -> dg.AssetsDefinition:
    key = asset_key(dataset, "raw_gzip")

    @versioned_asset(
        judgement.fresh,
        uses=(download, url_entry, fetch_raw_gzip),
        key=key,
        group_name=dataset.id,
        partitions_def=FILES,
        deps=[asset_key(dataset, "urls")],
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


IDX_USES = (
    idx,
    parse_idx,
    header_check,
    labels_check,
    header_problem,
    expected_kind,
    refuse_if_failed,
    metadata.idx_pictures,
    metadata.picture,
    pictures,
)
"""What the idx asset's code version hashes besides its body."""


def idx_asset(dataset: Dataset, judgement: Judgement) -> dg.AssetsDefinition:
    key = asset_key(dataset, "idx")

    @versioned_asset(
        judgement.fresh,
        uses=IDX_USES,
        checks=(HEADER_CHECK, LABELS_CHECK),
        key=key,
        group_name=dataset.id,
        partitions_def=FILES,
        ins={"raw": dg.AssetIn(asset_key(dataset, "raw_gzip"))},
        io_manager_key="npy_io_manager",
        required_resource_keys={"npy_io_manager"},
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
