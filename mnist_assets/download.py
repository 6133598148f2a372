"""Fetching a dataset file from its mirrors: streamed, retried, verified before it is accepted.

A file is accepted only when its decompressed payload has the pinned size and sha256 (or, where only
the published gzip is pinned, the gzip md5). The content decides, not the mirror: a re-compressed
mirror with the same payload passes; a damaged or different file never does.

The body goes to a file as it arrives and is checked on the way (inflated and hashed chunk by chunk),
so memory stays flat whatever the file's size and each byte is hashed once; the caller keeps the file
only once it verified. A long download logs its progress every few seconds.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import dagster as dg
import requests

from mnist_assets import idx
from mnist_assets.catalog import (
    ALLOWED_SCHEMES,
    LOCAL_HOSTS,
    Dataset,
    SourceFile,
    name_problem,
    redact_text,
    redact_url,
)
from mnist_assets.download_progress import DownloadProgress, Log
from mnist_assets.hashing import file_sha256

CHUNK = 1 << 20
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(dg.Failure):
    """No mirror produced a file with the pinned content, or the file's name is not a plain name.

    A :class:`dagster.Failure`, so the step failure, and the refresh summary read from it, carry this
    sentence itself rather than ``mnist_assets.download.DownloadError: ...``."""


class PinMismatch(idx.IdxError):
    """A whole file whose content is not what the catalog pins; ``pin`` is the catalog key it contradicts
    (the pin, newly written, is as likely to be wrong as the mirror)."""

    def __init__(self, pin: str, reason: str):
        super().__init__(reason)
        self.pin = pin


class _MirrorFailed(Exception):
    """One URL failed; ``retry`` says whether asking the same URL again may help; ``pin`` is the catalog
    key its content contradicts, if that was the failure."""

    def __init__(self, reason: str, retry: bool, pin: str | None = None):
        super().__init__(reason)
        self.retry, self.pin = retry, pin


@dataclass(frozen=True)
class Fetched:
    """A file whose content verified: where it came from, its payload sha256 and its gzip size, and
    how the server identified what it sent (:data:`IDENTIFYING_HEADERS`; empty for a local file)."""

    payload_sha256: str
    url: str
    gzip_size: int
    served: dict[str, str]


@dataclass(frozen=True)
class FetchedBytes(Fetched):
    """A verified file held in memory (:func:`fetch`)."""

    gzip_bytes: bytes


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 3
    backoff_seconds: float = 1.0
    max_redirects: int = 5
    progress_seconds: float = 2.0
    """Least time between two progress lines of one download (a last line says when it is done)."""


class _Content:
    """A gzip file's content taken in as it arrives: inflated (never past the pinned payload size) and
    its payload hashed, so each byte is hashed once and no more than a chunk is held."""

    def __init__(self, file: SourceFile):
        self.file = file
        self.inflater = idx.Inflater(file.payload_size)
        self.payload = hashlib.sha256()
        self.gzip_md5 = hashlib.md5() if file.payload_sha256 is None else None  # only where it decides

    def update(self, chunk: bytes) -> None:
        if self.gzip_md5 is not None:
            self.gzip_md5.update(chunk)
        try:
            for inflated in self.inflater.feed(chunk):
                self.payload.update(inflated)
        except idx.IdxError:
            if self.inflater.size > self.file.payload_size:  # a whole payload, or a bomb: both too long
                pinned = f"payload_size {self.file.payload_size}"
                raise PinMismatch("payload_size", f"payload is more than the pinned {pinned} bytes") from None
            raise

    def payload_digest(self) -> str:
        """The payload sha256 once the whole file went in (whatever it is; see :meth:`verified`)."""
        self.inflater.finish()
        return self.payload.hexdigest()

    def verified(self) -> str:
        """The payload sha256 if the file holds the pinned content; raises IdxError otherwise (a
        :class:`PinMismatch` for a whole file that is not the pinned one). The found digest is shown
        whole, so a wrong pin can be corrected from the message; the pin only as far as it identifies."""
        digest, file = self.payload_digest(), self.file
        if self.inflater.size != file.payload_size:
            raise PinMismatch(
                "payload_size",
                f"payload is {self.inflater.size} bytes ≠ pinned payload_size {file.payload_size}",
            )
        if file.payload_sha256 is not None and digest != file.payload_sha256:
            raise PinMismatch(
                "payload_sha256",
                f"payload sha256 {digest} ≠ pinned payload_sha256 {_short(file.payload_sha256)}",
            )
        if self.gzip_md5 is not None and (md5 := self.gzip_md5.hexdigest()) != file.gzip_md5:
            raise PinMismatch("gzip_md5", f"gzip md5 {md5} ≠ pinned gzip_md5 {_short(file.gzip_md5 or '')}")
        return digest


def _short(digest: str) -> str:
    """A pinned digest as people compare it: its first and last characters."""
    return f"{digest[:8]}…{digest[-4:]}"


def verify(gzip_bytes: bytes, file: SourceFile) -> str:
    """The payload sha256 if ``gzip_bytes`` holds the pinned content; raises IdxError otherwise."""
    content = _Content(file)
    for start in range(0, len(gzip_bytes), CHUNK):
        content.update(gzip_bytes[start : start + CHUNK])
    return content.verified()


class _Receiver:
    """One attempt's bytes as they arrive: into the sink, into the content check, counted for progress.
    Refuses a body larger than ``limit`` as soon as it says so or grows past it."""

    def __init__(self, file: SourceFile, sink: BinaryIO | None, limit: int, progress: DownloadProgress):
        self.content, self.sink, self.limit, self.progress = _Content(file), sink, limit, progress
        self.received = 0

    def expect(self, total: int | None, what: str) -> None:
        if total is not None and total > self.limit:
            raise _MirrorFailed(f"{what} {total} exceeds {self.limit} bytes", retry=False)
        self.progress.expect(total)

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise _MirrorFailed(f"body exceeds {self.limit} bytes", retry=False)
        if self.sink is not None:
            self.sink.write(chunk)
        self.content.update(chunk)
        self.progress.advance(self.received)


def _max_gzip_bytes(file: SourceFile) -> int:
    # gzip never grows incompressible data by more than a small constant per 16 KiB block
    return file.payload_size + file.payload_size // 100 + (1 << 16)


def _local_path(url: str, filename: str) -> Path:
    """The mirror file a file:// URL names: the mirror's directory, decoded from the URL, joined with
    the plain ``filename`` (never decoded: only the directory's part of the URL was encoded), resolved
    with every symlink, and refused unless it stays inside that directory. Refused before anything is
    opened, so a path outside the mirror is neither read nor probed."""
    mirror, slash, name = url.rpartition("/")
    parts = urlsplit(mirror + slash)
    if name != filename:
        raise _MirrorFailed(f"the URL does not end with /{filename}", retry=False)
    if parts.netloc.lower() not in LOCAL_HOSTS:
        raise _MirrorFailed(
            f"names host {parts.hostname!r}; file:// is read on this machine only", retry=False
        )
    if parts.query or parts.fragment:
        raise _MirrorFailed("has a '?' or '#' before the file name", retry=False)
    directory = Path(url2pathname(parts.path)).resolve()
    path = (directory / filename).resolve()
    if not path.is_relative_to(directory):
        raise _MirrorFailed(
            "is a symlink that leads out of the mirror directory; copy the file into the mirror", retry=False
        )
    return path


def _read_local(path: Path, receiver: _Receiver) -> None:
    try:
        source = path.open("rb")
    except FileNotFoundError:
        raise _MirrorFailed("no such file", retry=False) from None
    except OSError as error:
        raise _MirrorFailed(f"cannot read: {error.strerror or error}", retry=False) from None
    with source:
        receiver.expect(os.fstat(source.fileno()).st_size, "file size")
        for chunk in _chunks_of(source):
            receiver.write(chunk)


def _chunks_of(source: BinaryIO) -> Iterator[bytes]:
    """A local mirror file in chunks; a failing read is the mirror's failure (a failing write is not)."""
    try:
        while chunk := source.read(CHUNK):
            yield chunk
    except OSError as error:
        raise _MirrorFailed(f"cannot read: {error.strerror or error}", retry=False) from None


IDENTIFYING_HEADERS = ("ETag", "Last-Modified", "Content-Length")
"""The response headers a server changes when the file it serves changes (a HEAD answers them too)."""


def _identity(response: requests.Response) -> dict[str, str]:
    return {h: v for h in IDENTIFYING_HEADERS if (v := response.headers.get(h)) is not None}


def _read_http_url(
    session: requests.Session, url: str, receiver: _Receiver, policy: FetchPolicy
) -> dict[str, str]:
    """Stream ``url``'s body into ``receiver``; the response's identifying headers."""
    try:
        with session.get(url, stream=True, timeout=(policy.connect_timeout, policy.read_timeout)) as response:
            if response.status_code != 200:
                raise _MirrorFailed(
                    f"HTTP {response.status_code}", retry=response.status_code in RETRYABLE_STATUS
                )
            declared = response.headers.get("Content-Length")
            declared_size = int(declared) if declared is not None and declared.isdigit() else None
            receiver.expect(declared_size, "Content-Length")
            for chunk in response.iter_content(CHUNK):
                receiver.write(chunk)
            if declared_size is not None and receiver.received != declared_size:
                raise _MirrorFailed(f"body ended after {receiver.received} of {declared} bytes", retry=True)
            return _identity(response)
    except requests.TooManyRedirects:
        raise _MirrorFailed(f"more than {policy.max_redirects} redirects", retry=False) from None
    except requests.RequestException as error:
        raise _MirrorFailed(_network_reason(error, policy), retry=True) from None


def _network_reason(error: requests.RequestException, policy: FetchPolicy) -> str:
    """What went wrong on the wire, in words (requests nests urllib3's reasons several levels deep)."""
    text = str(error)
    if isinstance(error, requests.Timeout) or "timed out" in text:
        return f"timed out (connect {policy.connect_timeout:g} s, read {policy.read_timeout:g} s)"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        if incomplete := re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected", text):
            got, more = map(int, incomplete.groups())
            return f"connection closed after {got} of {got + more} bytes"
        if "reset" in text.lower():
            return "connection reset by the server mid-body"
        return "connection broken mid-body"
    if isinstance(error, requests.ConnectionError) and "refused" in text.lower():
        return "connection refused"
    return redact_text(f"{type(error).__name__}: {text}")  # anything else verbatim, minus secrets


def fetch_into(
    restart: Callable[[], BinaryIO],
    dataset: Dataset,
    file: SourceFile,
    urls: list[str],
    policy: FetchPolicy = FetchPolicy(),
    log: Log | None = None,
) -> Fetched:
    """Stream the first mirror's copy whose content verifies into a file, checking it on the way.

    ``restart()`` gives the (empty) file to write each attempt to; when this returns, the last one
    holds the verified gzip. The payload is inflated and hashed as the bytes arrive, so memory stays a
    chunk or two whatever the size. Every failure is kept for the error message."""
    _refuse_unplain(dataset, file)
    failures: list[str] = []
    pins: dict[str, None] = {}  # the pins some mirror's content contradicted, in order
    limit = _max_gzip_bytes(file)
    with requests.Session() as session:
        session.max_redirects = policy.max_redirects
        for url in urls:
            scheme = urlsplit(url).scheme.lower()
            shown = redact_url(url)
            for attempt in range(1, policy.attempts + 1):
                progress = DownloadProgress(log, f"{dataset.id}/{file.key}: {shown}", policy.progress_seconds)
                receiver = _Receiver(file, restart(), limit, progress)
                try:
                    if scheme not in ALLOWED_SCHEMES:
                        raise _MirrorFailed(f"scheme {scheme!r} is not allowed", retry=False)
                    try:
                        served: dict[str, str] = {}
                        if scheme == "file":
                            _read_local(_local_path(url, file.filename), receiver)
                        else:
                            served = _read_http_url(session, url, receiver, policy)
                        digest = receiver.content.verified()
                    except idx.IdxError as error:
                        pin = error.pin if isinstance(error, PinMismatch) else None
                        raise _MirrorFailed(f"content rejected: {error}", retry=False, pin=pin) from None
                    progress.done()
                    return Fetched(digest, shown, receiver.received, served)
                except _MirrorFailed as failure:
                    failures.append(f"{shown} (attempt {attempt}): {failure}")
                    if failure.pin is not None:
                        pins[failure.pin] = None
                    if log is not None:
                        log.warning(f"{dataset.id}/{file.key}: {shown}: {failure}")
                    if not failure.retry or attempt == policy.attempts:
                        break
                    time.sleep(policy.backoff_seconds * 2 ** (attempt - 1))
    tried = "\n  - ".join(failures) or "(no mirrors configured)"
    raise DownloadError(
        f"{dataset.id}: could not fetch {file.key} ({file.filename}) from any mirror:\n  - {tried}\n"
        f"What to do: {_what_to_do(dataset, file, list(pins))}"
    )


def _what_to_do(dataset: Dataset, file: SourceFile, pins: list[str]) -> str:
    """The advice after every mirror failed. A content that contradicts a pin is as likely a pin just
    written wrong (a new catalog entry) as a mirror serving other bytes: both are named."""
    elsewhere = (
        f"point {dataset.mirror_env_var} at a directory or HTTP(S) mirror that holds {file.filename} "
        "(comma-separated list), or pass mirrors in the raw_gzip asset's run config."
    )
    if not pins:
        return elsewhere
    return (
        f"if you added or edited this entry, fix {' and '.join(pins)} of {dataset.id}/files/{file.key} "
        f"in the catalog entry; if the pin is right, the mirror serves other bytes: {elsewhere}"
    )


def _refuse_unplain(dataset: Dataset, file: SourceFile) -> None:
    """The catalog refuses a name that is not a plain file name; this refuses it again for a file entry
    made without the catalog (``model_copy`` skips validation), before any mirror is asked."""
    if problem := name_problem(file.filename):
        raise DownloadError(f"{dataset.id}/files/{file.key}: {problem}. Nothing was read.")


def fetch(
    dataset: Dataset,
    file: SourceFile,
    urls: list[str],
    policy: FetchPolicy = FetchPolicy(),
    log: Log | None = None,
) -> FetchedBytes:
    """:func:`fetch_into` memory: for small files and tests (the raw_gzip asset streams to storage)."""
    buffer = io.BytesIO()

    def restart() -> BinaryIO:
        buffer.seek(0)
        buffer.truncate()
        return buffer

    fetched = fetch_into(restart, dataset, file, urls, policy, log)
    return FetchedBytes(
        fetched.payload_sha256, fetched.url, fetched.gzip_size, fetched.served, buffer.getvalue()
    )


def fingerprint(
    dataset: Dataset, file: SourceFile, urls: list[str], policy: FetchPolicy = FetchPolicy(read_timeout=10.0)
) -> dict | None:
    """What the first answering mirror says about the file now, without downloading it.

    HTTP(S): the response headers of a HEAD request (ETag, Last-Modified, Content-Length), which a
    server changes when the file changes. ``file://``: the payload sha256 itself (reading a local file
    costs less than guessing from its mtime). ``None`` when no mirror answers: the previous observation
    then stands, so an unreachable mirror never looks like a change.
    """
    _refuse_unplain(dataset, file)
    limit = _max_gzip_bytes(file)
    with requests.Session() as session:
        session.max_redirects = policy.max_redirects
        for url in urls:
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ALLOWED_SCHEMES:
                continue
            try:
                if scheme == "file":
                    return {
                        "url": redact_url(url),
                        **_local_state(_local_path(url, file.filename), file, limit),
                    }
                response = session.head(
                    url, allow_redirects=True, timeout=(policy.connect_timeout, policy.read_timeout)
                )
                if response.status_code != 200:
                    continue
                return {"url": redact_url(url), **_identity(response)}
            except (_MirrorFailed, requests.RequestException):
                continue
    return None


def _local_state(path: Path, file: SourceFile, limit: int) -> dict[str, str]:
    """A local mirror file's payload sha256, streamed; a damaged file is a state too (its gzip sha256
    and why it is unreadable): the download will say why."""
    receiver = _Receiver(file, None, limit, DownloadProgress(None, str(path), every=0))
    try:
        _read_local(path, receiver)
        return {"payload_sha256": receiver.content.payload_digest()}
    except idx.IdxError as error:
        with path.open("rb") as source:
            return {
                "gzip_sha256": file_sha256(source),
                "unreadable": str(error),
            }
