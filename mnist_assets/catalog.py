"""The dataset catalog: which datasets exist, where their files live and what their content must be.

A dataset is data (``catalog.json``), not code: adding one means adding an entry, never a module.
Mirrors are tried in order; an override (environment variable or run config) replaces the list, so an
internal mirror or a local directory is used instead of the internet, never silently beside it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import pydantic

from mnist_assets import settings
from mnist_assets.settings import SettingError

FILE_KEYS: tuple[str, ...] = ("train-images", "train-labels", "test-images", "test-labels")
"""The four files of an MNIST-format dataset; also the partition keys of the file-level assets."""

ALLOWED_SCHEMES = ("http", "https", "file")
DEFAULT_CATALOG = Path(__file__).with_name("catalog.json")
_DATASET_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


DEFAULT_MODEL = "cnn"
"""The one training configuration of a dataset whose catalog entry lists no ``models``."""


class CatalogError(SettingError):
    """A catalog entry (or a mirror override) is malformed: which dataset, which key, what is wrong.

    ``catalog`` names the file once it is known (:func:`read_catalog` adds it), so the line says where
    to look: ``catalog /p/cat.json, dataset my_ds, key image_shape: found [28], expected ...``.
    """

    def __init__(
        self, problem: str, dataset: str | None = None, key: str | None = None, catalog: Path | None = None
    ):
        self.problem, self.dataset, self.key, self.catalog = problem, dataset, key, catalog
        super().__init__(problem)

    def __str__(self) -> str:
        where = [
            *([f"catalog {self.catalog}"] if self.catalog else []),
            *([f"dataset {self.dataset}"] if self.dataset else []),
            *([f"key {self.key}"] if self.key else []),
        ]
        return f"{', '.join(where)}: {self.problem}" if where else self.problem

    def in_catalog(self, catalog: Path) -> CatalogError:
        """The same problem, naming the catalog file it is in."""
        return CatalogError(self.problem, self.dataset, self.key, catalog)


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
        """The title defaults to the id; each file entry learns its key."""
        if not isinstance(raw, dict):
            return raw
        raw = {**raw, "title": raw.get("title") or raw.get("id", "")}
        files = raw.get("files")
        if isinstance(files, dict):  # parse_dataset checked they are the four FILE_KEYS
            raw["files"] = {k: {**v, "key": k} if isinstance(v, dict) else v for k, v in files.items()}
        return raw

    @property
    def mirror_env_var(self) -> str:
        """The environment variable that overrides this dataset's mirror list."""
        return settings.mirror_variable(self.id)

    def resolve_mirrors(
        self, override: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> list[str]:
        """The mirror base URLs to try, in order: run-config override, then env override, then catalog."""
        if override:
            return [normalize_mirror(m, self.id) for m in override]
        if variable := settings.mirror_override(self.id, environ):
            try:
                return [normalize_mirror(m, self.id) for m in variable.split(",") if m.strip()]
            except CatalogError as error:
                raise SettingError(
                    f"{self.mirror_env_var}={redact_url(variable)!r}: {error.problem}; "
                    "or unset it to use the catalog's mirrors"
                ) from None
        try:
            return [normalize_mirror(m, self.id) for m in self.mirrors]
        except CatalogError as error:
            raise CatalogError(error.problem, self.id, "mirrors") from None

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
            f"mirror {redact_url(mirror)!r} uses scheme {scheme!r}; only {', '.join(ALLOWED_SCHEMES)} "
            "are allowed",
            dataset_id,
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
            f"mirror {redact_url(mirror)!r} names host {parts.hostname!r}, but a file:// mirror is read "
            f"on this machine only: write file://{parts.path} (or the directory's path) for a local "
            "copy, or an http(s):// URL for that server",
            dataset_id,
        )
    if parts.query or parts.fragment:
        raise CatalogError(
            f"mirror {redact_url(mirror)!r} has a '?' or '#' after its path; write the directory's path "
            "(a local directory's name is percent-encoded for you)",
            dataset_id,
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
    """``dataset_id``, or a CatalogError that names no dataset: the id itself is what is wrong."""
    if not _DATASET_ID.match(dataset_id):
        raise CatalogError(
            f"dataset id {dataset_id!r} must be lowercase letters, digits and '_' (starting with a letter)"
        )
    return dataset_id


EXPECTED = {
    "image_shape": "two positive integers [height, width], e.g. [28, 28]",
    "class_names": "a list of 2 to 256 class names, one per label",
    "mirrors": "a list of at least one mirror (an http(s):// or file:// URL, or a directory)",
    "files": "an object with the four file entries",
    "payload_size": "the decompressed file's size in bytes, a positive integer",
    "payload_sha256": "the decompressed file's sha256, 64 lowercase hex digits",
    "gzip_md5": "the gzip file's md5, 32 lowercase hex digits",
    "shards": "an object of shard settings",
    "training": "an object of training settings",
    "models": "an object of named training configurations",
}
"""What a catalog key must hold, in the words of the error a user reads (pydantic's say "tuple")."""


def _found(value: Any) -> str:
    """A value as it is written in the catalog (JSON), shortened to stay on one line."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain(
    dataset_id: str, error: pydantic.ValidationError, raw: Any, prefix: tuple[str, ...] = ()
) -> CatalogError:
    """The problems of one entry as a CatalogError: each as ``key K: found X, expected Y`` (an unknown
    key lists the allowed keys); ``raw`` is the entry as written, ``prefix`` where it sits in the dataset's
    entry (e.g. ``("models", "small")``)."""
    problems: list[tuple[str, str]] = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        depth = 3 if loc[:1] == ["files"] and not prefix else 1  # the key a person wrote, not a tuple index
        where = "/".join([*prefix, *loc[:depth]])
        if problem["type"] == "extra_forbidden":
            allowed = sorted(set(_allowed_keys(error, loc)) - {"id", "key"})
            detail = f"not a key here; allowed keys: {', '.join(allowed)}"
        elif problem["type"] == "value_error":
            detail = problem["msg"].removeprefix("Value error, ")
        else:
            value = _lookup(raw, loc[:depth])
            found = "nothing" if value is _MISSING else _found(value)
            expected = EXPECTED.get(loc[depth - 1] if loc else "", "") if not prefix else ""
            expected = expected or _expected(problem["msg"])
            detail = f"found {found}, expected {expected}"
        if where not in dict(problems):  # one problem per key (an image_shape's two numbers)
            problems.append((where, detail))
    first_key, first = problems[0]
    rest = "".join(f"; key {key}: {detail}" for key, detail in problems[1:])
    return CatalogError(first + rest, dataset_id, first_key or None)


def _expected(message: str) -> str:
    """pydantic's ``List should have at least 1 item after validation, not 0`` as ``at least 1 item``."""
    message = re.sub(r"^\w+ should (?:be |have )?", "", message)
    return re.sub(r" after validation, not \d+$", "", message)


_MISSING = object()


def _lookup(raw: Any, path: Sequence[str]) -> Any:
    for part in path:
        if not isinstance(raw, dict) or part not in raw:
            return _MISSING
        raw = raw[part]
    return raw


def _allowed_keys(error: pydantic.ValidationError, loc: Sequence[str]) -> Iterable[str]:
    """The keys allowed where an unknown key was written."""
    if error.title == "Dataset":
        return SourceFile.model_fields if loc[:1] == ["files"] else Dataset.model_fields
    return ()


def parse_dataset(dataset_id: str, raw: Any) -> Dataset:
    """One catalog entry, or a CatalogError naming the dataset and the key that is wrong."""
    validate_dataset_id(dataset_id)
    if not isinstance(raw, dict):
        raise CatalogError(f"found {_found(raw)}, expected an object (the dataset's entry)", dataset_id)
    files = raw.get("files")
    if isinstance(files, dict) and sorted(files) != sorted(FILE_KEYS):
        raise CatalogError(
            f"found {', '.join(sorted(files)) or 'no files'}, expected exactly {', '.join(FILE_KEYS)}",
            dataset_id,
            "files",
        )
    if "id" in raw:  # the key the entry is listed under
        raise CatalogError("not a key here (the id is the key the entry is listed under)", dataset_id, "id")
    for key, file in (files or {}).items():
        if isinstance(file, dict) and "key" in file:
            raise CatalogError(
                "not a key here (set by where the entry is listed)", dataset_id, f"files/{key}/key"
            )
    try:
        dataset = Dataset.model_validate({**raw, "id": dataset_id})
    except pydantic.ValidationError as error:
        raise explain(dataset_id, error, raw) from None
    dataset.resolve_mirrors(environ={})  # validates schemes
    return dataset


@dataclass(frozen=True)
class Catalog:
    """Every dataset of one catalog file, each parsed on its own: a mistake in one entry breaks that
    dataset only (its CatalogError, naming the file, is kept in ``problems``), never the others."""

    path: Path | None
    datasets: dict[str, Dataset]
    problems: dict[str, CatalogError] = field(default_factory=dict)


def _datasets_of(document: Any) -> dict[str, Any]:
    """The raw entries of a catalog document, or a CatalogError if the document itself is malformed."""
    if not isinstance(document, dict):
        raise CatalogError("the catalog must be a JSON object with a 'datasets' entry")
    unknown = sorted(k for k in document if k != "datasets" and not k.startswith("_"))
    if unknown:
        raise CatalogError(f"unknown key {unknown[0]!r}; allowed keys: datasets (and _comments)")
    entries = document.get("datasets", {})
    if not isinstance(entries, dict) or not entries:
        raise CatalogError("the catalog lists no datasets: 'datasets' must be an object of dataset entries")
    return entries


def parse_catalog(document: Any) -> dict[str, Dataset]:
    """Every dataset of a catalog document; top-level keys starting with ``_`` are comments. Strict: the
    first malformed entry raises (see :func:`read_catalog` for the per-dataset reading)."""
    return {dataset_id: parse_dataset(dataset_id, raw) for dataset_id, raw in _datasets_of(document).items()}


def read_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """A catalog file (the packaged one by default), each dataset parsed on its own. Raises only when
    the file itself cannot be read as a catalog."""
    path = Path(path) if path else DEFAULT_CATALOG
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise CatalogError(f"cannot read it: {error.strerror or error}", catalog=path) from None
    except json.JSONDecodeError as error:
        raise CatalogError(f"not valid JSON: {error}", catalog=path) from None
    try:
        entries = _datasets_of(document)
    except CatalogError as error:
        raise error.in_catalog(path) from None
    datasets, problems = {}, {}
    for dataset_id, raw in entries.items():
        try:
            datasets[dataset_id] = parse_dataset(dataset_id, raw)
        except CatalogError as error:
            problems[dataset_id] = error.in_catalog(path)
    return Catalog(path, datasets, problems)


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, Dataset]:
    """Every dataset of a catalog file (the packaged one by default); strict: the first malformed entry
    raises, naming the file."""
    catalog = read_catalog(path)
    if catalog.problems:
        raise next(iter(catalog.problems.values()))
    return catalog.datasets
