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
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import pydantic

FILE_KEYS: tuple[str, ...] = ("train-images", "train-labels", "test-images", "test-labels")
"""The four files of an MNIST-format dataset; also the partition keys of the file-level assets."""

ALLOWED_SCHEMES = ("http", "https", "file")
DEFAULT_CATALOG = Path(__file__).with_name("catalog.json")
_DATASET_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


DEFAULT_MODEL = "cnn"
"""The one training configuration of a dataset whose catalog entry lists no ``models``."""


class CatalogError(ValueError):
    """The catalog or a mirror override is malformed."""


FileKey = Literal["train-images", "train-labels", "test-images", "test-labels"]


class _Entry(pydantic.BaseModel):
    """A part of the catalog: frozen, and unknown keys are refused (a misspelled setting must not be
    silently ignored)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


_NOT_IN_A_NAME = re.compile(r"[/\\%?#\x00-\x1f\x7f-\x9f]")
"""Path separators, the start of a percent-encoding, a URL's query or fragment, control characters."""


def name_problem(filename: str) -> str | None:
    """Why ``filename`` is not a plain file name of the mirror's directory, or None when it is one.

    A name is joined to a mirror: to a directory's path, to a file:// or an HTTP URL, which clients and
    servers percent-decode (some more than once, ``%252E`` -> ``%2E`` -> ``.``). A name holding none of
    ``/ \\ % ? #`` nor a control character, and not starting with ``.``, means the same file in all of
    them: no decoding can change it, so it cannot climb out of the mirror (``..``, ``%2E%2E%2F``),
    name another directory, or end the path early.
    """
    if not filename:
        return "filename is empty; give the file's own name in the mirror (e.g. train-images-idx3-ubyte.gz)"
    found = _NOT_IN_A_NAME.search(filename)
    if found is None and not filename.startswith("."):
        return None
    why = f"it contains {found.group()!r}" if found else "it starts with '.'"
    if (decoded := _percent_decoded(filename)) != filename:
        why += f" and decodes to {decoded!r}"
    return (
        f"filename {filename!r} is not a plain file name: {why}; give the file's own name in the mirror "
        "(no / \\ % ? #, control characters or leading '.')"
    )


def _percent_decoded(text: str) -> str:
    """``text`` percent-decoded until nothing changes (what a chain of decoders would make of it)."""
    while (decoded := unquote(text)) != text:
        text = decoded
    return text


class SourceFile(_Entry):
    """One gzip file of a dataset and the content it must decompress to."""

    key: FileKey
    """The file's role, from the key it is listed under (not written in the entry)."""
    filename: str
    payload_size: int = pydantic.Field(gt=0)
    payload_sha256: str | None = pydantic.Field(default=None, pattern=_SHA256.pattern)
    gzip_md5: str | None = pydantic.Field(default=None, pattern=_MD5.pattern)

    @pydantic.field_validator("filename")
    @classmethod
    def _plain_name(cls, filename: str) -> str:
        if problem := name_problem(filename):
            raise ValueError(problem)
        return filename

    @pydantic.model_validator(mode="after")
    def _pinned(self) -> SourceFile:
        if self.payload_sha256 is None and self.gzip_md5 is None:
            raise ValueError("pin payload_sha256 (preferred) or gzip_md5")
        return self


class Dataset(_Entry):
    id: str = pydantic.Field(pattern=_DATASET_ID.pattern)
    """From the key the entry is listed under (not written in the entry)."""
    title: str = ""
    homepage: str = ""
    mirrors: tuple[str, ...] = pydantic.Field(min_length=1)
    files: dict[FileKey, SourceFile]
    class_names: tuple[str, ...] = pydantic.Field(min_length=2, max_length=256)
    image_shape: tuple[pydantic.PositiveInt, pydantic.PositiveInt] = (28, 28)
    """(height, width) of every image: the idx check refuses image files of another shape."""

    @pydantic.field_validator("image_shape", mode="before")
    @classmethod
    def _two_sides(cls, shape: Any) -> Any:
        if isinstance(shape, (list, tuple)) and len(shape) != 2:
            raise ValueError(f"found {json.dumps(list(shape))}, expected [height, width]")
        return shape

    shards: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Overrides of the shard settings' defaults (seed, rows_per_shard, ...) for this dataset."""
    training: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Overrides of the training settings' defaults (epochs, ...) for this dataset."""
    models: dict[str, dict[str, Any]] = pydantic.Field(default_factory=dict)
    """Named training configurations, each overrides on top of ``training``; none listed means one,
    :data:`DEFAULT_MODEL`. Each is a partition of the checkpoint (``mnist_assets.models``)."""

    @pydantic.field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in models:
            if not _DATASET_ID.match(name):
                raise ValueError(
                    f"model name {name!r} must be lowercase letters, digits and '_' (starting with a letter)"
                )
        return models

    @property
    def model_names(self) -> list[str]:
        """The training configurations' names, in catalog order: the checkpoint's partitions."""
        return list(self.models) or [DEFAULT_MODEL]

    @pydantic.model_validator(mode="before")
    @classmethod
    def _fill_in(cls, raw: Any) -> Any:
        """The title defaults to the id; each file entry learns its key; all four files must be there."""
        if not isinstance(raw, dict):
            return raw
        raw = {**raw, "title": raw.get("title") or raw.get("id", "")}
        files = raw.get("files")
        if isinstance(files, dict):
            if sorted(files) != sorted(FILE_KEYS):
                raise ValueError(f"files must be exactly {', '.join(FILE_KEYS)}")
            raw["files"] = {k: {**v, "key": k} if isinstance(v, dict) else v for k, v in files.items()}
        return raw

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

    def file(self, key: str) -> SourceFile:
        """The file listed under ``key``, which may be any str (a partition key of the file-level assets)."""
        if key not in self.files:
            raise KeyError(f"{self.id}: no file {key!r}; the files are {', '.join(self.files)}")
        return self.files[cast(FileKey, key)]  # one of the keys, checked above

    def file_urls(self, mirrors: Sequence[str]) -> dict[str, list[str]]:
        """Every candidate URL of every file, in mirror order."""
        return {key: [m + f.filename for m in mirrors] for key, f in self.files.items()}


LOCAL_HOSTS = ("", "localhost")
"""The hosts a file:// URL may name: it is read on this machine, so another host cannot be meant."""


def normalize_mirror(mirror: str, dataset_id: str) -> str:
    """A mirror as a base URL ending in '/'; a local directory becomes a file:// URL.

    Every mirror passes here, from the catalog, ``MNIST_ASSETS_MIRROR_<DATASET>`` or run config. A
    file:// URL naming another host is refused: it would be read from this machine's same path, the
    host ignored without a word."""
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
    if scheme == "file":
        _check_local(mirror, dataset_id)
    return mirror if mirror.endswith("/") else mirror + "/"


def _check_local(mirror: str, dataset_id: str) -> None:
    """A file:// mirror names a directory of this machine: no other host, and nothing after the path
    (a ``#`` or ``?`` would cut the directory's path short, so another directory would be read)."""
    parts = urlsplit(mirror)
    if parts.netloc.lower() not in LOCAL_HOSTS:
        raise CatalogError(
            f"{dataset_id}: mirror {redact_url(mirror)!r} names host {parts.hostname!r}, but a file:// "
            f"mirror is read on this machine only: write file://{parts.path} (or the directory's path) "
            "for a local copy, or an http(s):// URL for that server"
        )
    if parts.query or parts.fragment:
        raise CatalogError(
            f"{dataset_id}: mirror {redact_url(mirror)!r} has a '?' or '#' after its path; write the "
            "directory's path (a local directory's name is percent-encoded for you)"
        )


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


def explain(
    where: str, error: pydantic.ValidationError, allowed: Mapping[str, Sequence[str]] | None = None
) -> str:
    """Each problem of ``error`` as ``where/key: found X, expected Y``, joined by ``; ``.

    ``allowed``: for an unknown key, the keys that are allowed, by the first part of its location
    (``""`` for the top level), so a misspelling shows what was meant."""
    problems = []
    for problem in error.errors():
        at = "/".join([where, *(str(part) for part in problem["loc"])])
        if problem["type"] == "extra_forbidden":
            keys = (allowed or {}).get(str(problem["loc"][0]) if len(problem["loc"]) > 1 else "", ())
            problems.append(f"{at}: unknown key {problem['loc'][-1]!r}; allowed keys: {', '.join(keys)}")
        elif problem["type"] == "missing":
            problems.append(f"{at}: missing; it is required")
        elif problem["type"] == "value_error":  # our own validators' sentences say what was found
            problems.append(f"{at}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(
                f"{at}: found {json.dumps(problem['input'], default=str)}, {_expected(problem['msg'])}"
            )
    return "; ".join(problems)


def _expected(message: str) -> str:
    """pydantic's ``Input should be greater than 0`` as ``expected greater than 0``."""
    message = re.sub(r"^\w+ should (?:be |have )?", "", message)
    return "expected " + re.sub(r" after validation, not \d+$", "", message)


def _explain(dataset_id: str, error: pydantic.ValidationError) -> str:
    """A dataset entry's problems; an unknown key lists the keys that are allowed."""
    keys = sorted(set(Dataset.model_fields) - {"id"})
    return explain(dataset_id, error, {"": keys, "files": sorted(set(SourceFile.model_fields) - {"key"})})


def parse_dataset(dataset_id: str, raw: Any) -> Dataset:
    validate_dataset_id(dataset_id)
    if not isinstance(raw, dict):
        raise CatalogError(f"{dataset_id}: the entry must be a JSON object")
    files = raw.get("files")
    if not isinstance(files, dict):
        files = {}  # missing or not an object: Dataset's validation reports it
    written = {"id"} & set(raw) | {"key"} & {k for f in files.values() if isinstance(f, dict) for k in f}
    if written:  # they are the keys the entries are listed under
        raise CatalogError(
            f"{dataset_id}: unknown key {sorted(written)[0]!r} (set by where the entry is listed)"
        )
    try:
        dataset = Dataset.model_validate({**raw, "id": dataset_id})
    except pydantic.ValidationError as error:
        raise CatalogError(_explain(dataset_id, error)) from None
    dataset.resolve_mirrors(environ={})  # validates schemes
    return dataset


def parse_catalog(document: Any) -> dict[str, Dataset]:
    """Every dataset of a catalog document; top-level keys starting with ``_`` are comments."""
    if not isinstance(document, dict):
        raise CatalogError("the catalog must be a JSON object with a 'datasets' entry")
    unknown = sorted(k for k in document if k != "datasets" and not k.startswith("_"))
    if unknown:
        raise CatalogError(f"catalog: unknown key {unknown[0]!r}; allowed keys: datasets (and _comments)")
    datasets = {
        dataset_id: parse_dataset(dataset_id, raw) for dataset_id, raw in document.get("datasets", {}).items()
    }
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
