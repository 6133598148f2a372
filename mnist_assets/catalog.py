"""The dataset catalog: which datasets exist, where their files live and what their content must be.

A dataset is data (``catalog.json``), not code: adding one means adding an entry, never a module.
Mirrors are tried in order; an override (environment variable or run config) replaces the list, so an
internal mirror or a local directory is used instead of the internet, never silently beside it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

FILE_KEYS: tuple[str, ...] = ("train-images", "train-labels", "test-images", "test-labels")
"""The four files of an MNIST-format dataset; also the partition keys of the file-level assets."""

ALLOWED_SCHEMES = ("http", "https", "file")
DEFAULT_CATALOG = Path(__file__).with_name("catalog.json")
_DATASET_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class CatalogError(ValueError):
    """The catalog or a mirror override is malformed."""


@dataclass(frozen=True)
class SourceFile:
    """One gzip file of a dataset and the content it must decompress to."""

    key: str
    filename: str
    payload_size: int
    payload_sha256: str | None = None
    gzip_md5: str | None = None


@dataclass(frozen=True)
class Dataset:
    id: str
    title: str
    mirrors: tuple[str, ...]
    files: Mapping[str, SourceFile]
    class_names: tuple[str, ...]
    homepage: str = ""
    shards: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the shard settings' defaults (seed, rows_per_shard, ...) for this dataset."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the training settings' defaults (epochs, ...) for this dataset."""

    @property
    def mirror_env_var(self) -> str:
        """The environment variable that overrides this dataset's mirror list."""
        return f"MNIST_ASSETS_MIRROR_{self.id.upper()}"

    def resolve_mirrors(
        self, override: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> list[str]:
        """The mirror base URLs to try, in order: run-config override, then env override, then catalog."""
        environ = os.environ if environ is None else environ
        if override:
            chosen = list(override)
        elif environ.get(self.mirror_env_var, "").strip():
            chosen = [m for m in environ[self.mirror_env_var].split(",") if m.strip()]
        else:
            chosen = list(self.mirrors)
        return [normalize_mirror(m, self.id) for m in chosen]

    def file_urls(self, mirrors: Sequence[str]) -> dict[str, list[str]]:
        """Every candidate URL of every file, in mirror order."""
        return {key: [m + f.filename for m in mirrors] for key, f in self.files.items()}


def normalize_mirror(mirror: str, dataset_id: str) -> str:
    """A mirror as a base URL ending in '/'; a local directory becomes a file:// URL."""
    mirror = mirror.strip()
    scheme = urlsplit(mirror).scheme.lower()
    if not scheme or (len(scheme) == 1 and os.name == "nt"):
        mirror = Path(mirror).expanduser().absolute().as_uri()
        scheme = "file"
    if scheme not in ALLOWED_SCHEMES:
        raise CatalogError(
            f"{dataset_id}: mirror {redact_url(mirror)!r} uses scheme {scheme!r}; "
            f"only {', '.join(ALLOWED_SCHEMES)} are allowed"
        )
    return mirror if mirror.endswith("/") else mirror + "/"


def redact_url(url: str) -> str:
    """The URL without user:password or query values (tokens, signatures), so it can be logged and
    stored in metadata; query keys stay, so people can still tell which URL it was."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_USERINFO = re.compile(r"//[^/\s@'\"]*@")
_QUERY_VALUE = re.compile(r"([?&][^=&\s#'\"]+=)[^&\s#'\"]*")


def redact_text(text: str) -> str:
    """``text`` with what :func:`redact_url` hides masked wherever a URL, or the path and query of
    one, appears in it (exception messages quote them: "... with url: /f.gz?token=...")."""
    return _QUERY_VALUE.sub(r"\1***", _USERINFO.sub("//***@", text))


def validate_dataset_id(dataset_id: str) -> str:
    if not _DATASET_ID.match(dataset_id):
        raise CatalogError(
            f"dataset id {dataset_id!r} must be lowercase letters, digits and '_' (starting with a letter)"
        )
    return dataset_id


def _parse_file(dataset_id: str, key: str, raw: Mapping) -> SourceFile:
    where = f"{dataset_id}/{key}"
    filename = raw.get("filename", "")
    if not filename or "/" in filename or filename.startswith("."):
        raise CatalogError(f"{where}: filename {filename!r} must be a plain file name")
    sha, md5 = raw.get("payload_sha256"), raw.get("gzip_md5")
    if sha is None and md5 is None:
        raise CatalogError(f"{where}: pin payload_sha256 (preferred) or gzip_md5")
    if sha is not None and not _SHA256.match(sha):
        raise CatalogError(f"{where}: payload_sha256 must be 64 lowercase hex digits")
    if md5 is not None and not _MD5.match(md5):
        raise CatalogError(f"{where}: gzip_md5 must be 32 lowercase hex digits")
    size = raw.get("payload_size")
    if not isinstance(size, int) or size <= 0:
        raise CatalogError(f"{where}: payload_size must be a positive integer")
    return SourceFile(key, filename, size, sha, md5)


def parse_catalog(document: Mapping) -> dict[str, Dataset]:
    datasets = {}
    for dataset_id, raw in document.get("datasets", {}).items():
        validate_dataset_id(dataset_id)
        files = raw.get("files", {})
        if sorted(files) != sorted(FILE_KEYS):
            raise CatalogError(f"{dataset_id}: files must be exactly {', '.join(FILE_KEYS)}")
        class_names = tuple(raw.get("class_names", ()))
        if not 2 <= len(class_names) <= 256:
            raise CatalogError(f"{dataset_id}: class_names must list 2 to 256 names")
        dataset = Dataset(
            id=dataset_id,
            title=raw.get("title", dataset_id),
            mirrors=tuple(raw.get("mirrors", ())),
            files={key: _parse_file(dataset_id, key, files[key]) for key in FILE_KEYS},
            class_names=class_names,
            homepage=raw.get("homepage", ""),
            shards=dict(raw.get("shards", {})),
            training=dict(raw.get("training", {})),
        )
        if not dataset.mirrors:
            raise CatalogError(f"{dataset_id}: list at least one mirror")
        dataset.resolve_mirrors(environ={})  # validates schemes
        datasets[dataset_id] = dataset
    if not datasets:
        raise CatalogError("the catalog lists no datasets")
    return datasets


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, Dataset]:
    """Read a catalog file (the packaged one by default)."""
    path = Path(path) if path else DEFAULT_CATALOG
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CatalogError(f"cannot read catalog {path}: {error}") from error
    return parse_catalog(document)
