"""Fetching a dataset file from its mirrors: streamed, retried, verified before it is accepted.

A file is accepted only when its decompressed payload has the pinned size and sha256 (or, where only
the published gzip is pinned, the gzip md5). The content decides, not the mirror: a re-compressed
mirror with the same payload passes; a damaged or different file never does.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests

from mnist_assets import idx
from mnist_assets.catalog import ALLOWED_SCHEMES, Dataset, SourceFile, redact_text, redact_url

CHUNK = 1 << 20
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """No mirror produced a file with the pinned content."""


class _MirrorFailed(Exception):
    """One URL failed; ``retry`` says whether asking the same URL again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


@dataclass(frozen=True)
class Fetched:
    gzip_bytes: bytes
    payload_sha256: str
    url: str


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 3
    backoff_seconds: float = 1.0
    max_redirects: int = 5


def verify(gzip_bytes: bytes, file: SourceFile) -> str:
    """The payload sha256 if ``gzip_bytes`` holds the pinned content; raises IdxError otherwise."""
    size, digest = idx.payload_digest(gzip_bytes, file.payload_size)
    if size != file.payload_size:
        raise idx.IdxError(f"payload is {size} bytes, expected {file.payload_size}")
    if file.payload_sha256 is not None and digest != file.payload_sha256:
        raise idx.IdxError(f"payload sha256 {digest} does not match the pinned {file.payload_sha256}")
    if file.payload_sha256 is None and hashlib.md5(gzip_bytes).hexdigest() != file.gzip_md5:
        raise idx.IdxError(
            f"gzip md5 {hashlib.md5(gzip_bytes).hexdigest()} does not match the pinned {file.gzip_md5}"
        )
    return digest


def _max_gzip_bytes(file: SourceFile) -> int:
    # gzip never grows incompressible data by more than a small constant per 16 KiB block
    return file.payload_size + file.payload_size // 100 + (1 << 16)


def _read_file_url(url: str, limit: int) -> bytes:
    path = Path(url2pathname(urlsplit(url).path))
    try:
        if path.stat().st_size > limit:
            raise _MirrorFailed(f"file is larger than {limit} bytes", retry=False)
        return path.read_bytes()
    except FileNotFoundError:
        raise _MirrorFailed("no such file", retry=False) from None
    except OSError as error:
        raise _MirrorFailed(f"cannot read: {error.strerror or error}", retry=False) from None


def _read_http_url(session: requests.Session, url: str, limit: int, policy: FetchPolicy) -> bytes:
    try:
        with session.get(url, stream=True, timeout=(policy.connect_timeout, policy.read_timeout)) as response:
            if response.status_code != 200:
                raise _MirrorFailed(
                    f"HTTP {response.status_code}", retry=response.status_code in RETRYABLE_STATUS
                )
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _MirrorFailed(f"Content-Length {declared} exceeds {limit} bytes", retry=False)
            body = bytearray()
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise _MirrorFailed(f"body exceeds {limit} bytes", retry=False)
            if declared is not None and declared.isdigit() and len(body) != int(declared):
                raise _MirrorFailed(f"body ended after {len(body)} of {declared} bytes", retry=True)
            return bytes(body)
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


def fetch(
    dataset: Dataset,
    file: SourceFile,
    urls: list[str],
    policy: FetchPolicy = FetchPolicy(),
    log=None,
) -> Fetched:
    """The first mirror's copy whose content verifies; every failure is kept for the error message."""
    failures: list[str] = []
    limit = _max_gzip_bytes(file)
    with requests.Session() as session:
        session.max_redirects = policy.max_redirects
        for url in urls:
            scheme = urlsplit(url).scheme.lower()
            shown = redact_url(url)
            for attempt in range(1, policy.attempts + 1):
                try:
                    if scheme not in ALLOWED_SCHEMES:
                        raise _MirrorFailed(f"scheme {scheme!r} is not allowed", retry=False)
                    if scheme == "file":
                        data = _read_file_url(url, limit)
                    else:
                        data = _read_http_url(session, url, limit, policy)
                    try:
                        digest = verify(data, file)
                    except idx.IdxError as error:
                        raise _MirrorFailed(f"content rejected: {error}", retry=False) from None
                    return Fetched(data, digest, shown)
                except _MirrorFailed as failure:
                    failures.append(f"{shown} (attempt {attempt}): {failure}")
                    if log is not None:
                        log.warning(f"{dataset.id}/{file.key}: {shown}: {failure}")
                    if not failure.retry or attempt == policy.attempts:
                        break
                    time.sleep(policy.backoff_seconds * 2 ** (attempt - 1))
    tried = "\n  - ".join(failures) or "(no mirrors configured)"
    raise DownloadError(
        f"{dataset.id}: could not fetch {file.key} ({file.filename}) from any mirror:\n  - {tried}\n"
        f"What to do: point {dataset.mirror_env_var} at a directory or HTTP(S) mirror that holds "
        f"{file.filename} (comma-separated list), or pass mirrors in the raw_gzip asset's run config."
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
    limit = _max_gzip_bytes(file)
    with requests.Session() as session:
        session.max_redirects = policy.max_redirects
        for url in urls:
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ALLOWED_SCHEMES:
                continue
            try:
                if scheme == "file":
                    data = _read_file_url(url, limit)
                    try:
                        return {
                            "url": redact_url(url),
                            "payload_sha256": idx.payload_digest(data, file.payload_size)[1],
                        }
                    except idx.IdxError as error:  # a damaged file is a state too: the download will say why
                        return {
                            "url": redact_url(url),
                            "gzip_sha256": idx.sha256(data),
                            "unreadable": str(error),
                        }
                response = session.head(
                    url, allow_redirects=True, timeout=(policy.connect_timeout, policy.read_timeout)
                )
                if response.status_code != 200:
                    continue
                headers = {h: response.headers.get(h) for h in ("ETag", "Last-Modified", "Content-Length")}
                return {"url": redact_url(url), **{k: v for k, v in headers.items() if v is not None}}
            except (_MirrorFailed, requests.RequestException):
                continue
    return None
