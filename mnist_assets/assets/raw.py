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
    Observer,
    asset_key,
    refuse_if_failed,
    versioned_asset,
)
from mnist_assets.catalog import FILE_KEYS, Dataset, SourceFile, redact_url
from mnist_assets.dagster_private import observation
from mnist_assets.hashing import json_version
from mnist_assets.storage.backends import Stored
from mnist_assets.tags import ANSWERED, FETCHED_FROM, OBSERVED_DAILY, PINNED, ROW_COUNT, SERVED_AS


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


def expected_kind(key: str, dataset: Dataset) -> tuple[int, tuple[int, ...]]:
    """(ndim, trailing shape) an IDX file of this partition must have."""
    return (3, dataset.image_shape) if key.endswith("images") else (1, ())


def pinned_version(file: SourceFile) -> str:
    """The data version of a file whose mirror serves the pinned payload: the catalog's pins alone, so
    where the file is served from (a mirror, an override, a trailing slash) is no part of it."""
    return json_version(
        {"payload_sha256": file.payload_sha256, "payload_size": file.payload_size, "gzip_md5": file.gzip_md5}
    )


def observe_urls(
    dataset: Dataset, mirrors: list[str], instance: dg.DagsterInstance, warn
) -> list[dg.AssetObservation]:
    """Each file's observation (:func:`url_observation`), the mirrors asked for all files at once."""
    urls = dataset.file_urls(mirrors)

    def look(k: str):
        return download.fingerprint(dataset, dataset.file(k), urls[k])

    with ThreadPoolExecutor(len(FILE_KEYS)) as pool:
        remote = dict(zip(FILE_KEYS, pool.map(look, FILE_KEYS), strict=True))
    silent = [k for k, seen in remote.items() if seen is None]
    if silent:
        warn(
            f"{dataset.id}: no mirror answered for {', '.join(silent)}; their previous data version "
            f"stands, or the pinned payload's on a first observation (set {dataset.mirror_env_var} to a "
            "reachable mirror)"
        )
    return [url_observation(dataset, k, remote[k], instance) for k in FILE_KEYS]


def url_observation(
    dataset: Dataset, file_key: str, remote: dict | None, instance: dg.DagsterInstance
) -> dg.AssetObservation:
    """The data version raw_gzip[file_key] is built against: the payload, not the way to it.

    Evidence that the mirror serves another payload (:func:`served_differs`) gives a version that makes
    raw_gzip stale: the rebuild downloads and verifies against the pin (a wrong payload fails clearly,
    the last good file kept). Without evidence (the mirror did not answer, was never downloaded from,
    or serves what last verified) the previous version stands when it was judged against these very
    pins, else it is the pins' own. So a cold build whose HEAD failed, then verified the pinned payload,
    leaves nothing stale, and a re-download after a changed ETag is the version it was built against.
    Mirror and answer go in the metadata (the asset page shows them), never in the version.
    """
    file, key = dataset.file(file_key), asset_key(dataset, "urls")
    pinned = pinned_version(file)
    previous = latest_observation(instance, key, file_key)
    standing = None
    if previous is not None and previous.data_version and _text(previous.metadata.get(PINNED)) == pinned:
        standing = previous.data_version
    fetched = last_fetch(instance, asset_key(dataset, "raw_gzip"), file_key)
    evidence = served_differs(file, remote, fetched) if remote is not None else None
    if evidence is not None:
        version = json_version({"pinned": pinned, "served": evidence})
        judged = "the mirror serves other bytes than last verified: raw_gzip downloads and verifies again"
    elif standing is not None:
        version, judged = standing, "nothing says the served payload changed: the previous version stands"
    else:
        version, judged = pinned, "the pinned payload (no observation against these pins yet)"
    metadata = {
        "mirror": remote["url"] if remote else "none answered",
        "remote": dg.MetadataValue.json({k: v for k, v in (remote or {}).items() if k != "url"}),
        "judged": judged,
        PINNED: pinned,
        ANSWERED: remote is not None,
    }
    return observation(key, file_key, version, metadata)


def served_differs(file: SourceFile, remote: dict, fetched: dict | None) -> dict | None:
    """What says the mirror's payload is not the verified one, or None.

    A local mirror's payload is read: it differs when it is not the pinned one (or cannot be read). An
    HTTP mirror gives only headers: they differ when the same URL identified its file otherwise the last
    time it delivered a verified payload (``fetched``). A URL never downloaded from is no evidence: the
    pin still guards whatever a download brings.
    """
    state = {k: v for k, v in remote.items() if k != "url"}
    if "unreadable" in state:
        return state
    if "payload_sha256" in state:
        return state if file.payload_sha256 and state["payload_sha256"] != file.payload_sha256 else None
    if fetched is None or fetched.get(FETCHED_FROM) != remote["url"] or SERVED_AS not in fetched:
        return None
    return state if state != fetched[SERVED_AS] else None


def latest_observation(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dg.AssetObservation | None:
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
    records = instance.fetch_observations(records_filter, limit=1).records
    return records[0].asset_observation if records else None


def last_fetch(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict | None:
    """Where raw_gzip[partition]'s verified bytes came from and how the server identified them."""
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
    records = instance.fetch_materializations(records_filter, limit=1).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return None
    return {k: v.value for k, v in materialization.metadata.items() if k in (FETCHED_FROM, SERVED_AS)}


def _text(value) -> str | None:
    return None if value is None else str(value.value)


def fetch_raw_gzip(
    dataset: Dataset, file_key: str, mirrors: list[str], staged, log
) -> tuple[download.Fetched, Stored]:
    """Stream the first mirror's copy whose content verifies into ``staged``, then commit it."""
    urls = dataset.file_urls(mirrors)[file_key]
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
    def look(instance: dg.DagsterInstance, warn) -> list[dg.AssetObservation]:
        return observe_urls(dataset, mirrors, instance, warn)

    return dg.observable_source_asset(
        key=asset_key(dataset, "urls"),
        group_name=dataset.id,
        partitions_def=FILES,
        description=f"{dataset.title}: each file's payload as the catalog pins it, unless the first "
        "answering mirror gives evidence it now serves other bytes (a local mirror's payload sha256; an "
        "HTTP mirror's HEAD ETag / Last-Modified / Content-Length unlike those of the download from the "
        "same URL that last verified). A new pin or such evidence makes exactly that file's raw_gzip "
        "partition stale; another mirror or a trailing slash does not. Each observation's metadata names "
        "the mirror and what it answered. The daily_refresh schedule observes it; `mnist-assets refresh` "
        "does too.",
        metadata={"mirrors": dg.MetadataValue.json([redact_url(m) for m in mirrors])},
        tags={OBSERVED_DAILY: "true"},
    )(Observer("urls", look))


def raw_gzip_asset(dataset: Dataset, mirrors: list[str], judgement: Judgement) -> dg.AssetsDefinition:
    key = asset_key(dataset, "raw_gzip")

    @versioned_asset(
        judgement.fresh,
        uses=(download, fetch_raw_gzip),
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
            metadata={
                FETCHED_FROM: fetched.url,
                SERVED_AS: dg.MetadataValue.json(fetched.served),
                "payload_sha256": fetched.payload_sha256,
            },
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
