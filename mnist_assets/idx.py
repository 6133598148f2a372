"""The IDX file format (LeCun's MNIST container) and its gzip wrapping.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per dimension,
then the values in C order, big-endian. The header is checked against the payload length before any
array is built, so a lying header cannot trigger a huge allocation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in TYPE_CODES.items()}


_CHUNK = 1 << 22
MAX_PAYLOAD = 1 << 32
"""Largest payload accepted (4 GiB); a header promising more is rejected before allocating."""


class IdxError(ValueError):
    """The bytes are not a well-formed IDX payload."""


class _TooLong(IdxError):
    """The gzip stream decompresses to more than the limit (trailing bytes or a bomb)."""


@dataclass(frozen=True)
class IdxHeader:
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Header plus payload bytes this header promises."""
        count = 1
        for dim in self.shape:
            count *= dim
        return 4 + 4 * len(self.shape) + count * self.dtype.itemsize


def read_header(payload: bytes) -> IdxHeader:
    if len(payload) < 4:
        raise IdxError(f"too short for an IDX header ({len(payload)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", payload[:4])
    if zero != 0:
        raise IdxError(f"bad magic number 0x{payload[:4].hex()} (expected 0x0000 then type code)")
    if code not in TYPE_CODES:
        raise IdxError(f"unknown IDX type code 0x{code:02x}")
    if len(payload) < 4 + 4 * ndim:
        raise IdxError(f"header declares {ndim} dimensions but the file ends inside the header")
    shape = struct.unpack(f">{ndim}I", payload[4 : 4 + 4 * ndim])
    return IdxHeader(TYPE_CODES[code], tuple(shape))


def parse(payload: bytes) -> np.ndarray:
    """The array in an IDX payload, in native byte order."""
    header = read_header(payload)
    if header.size != len(payload):
        problem = "truncated" if len(payload) < header.size else "has trailing bytes"
        raise IdxError(
            f"payload {problem}: header {header.dtype.str}{list(header.shape)} needs "
            f"{header.size} bytes, got {len(payload)}"
        )
    offset = 4 + 4 * len(header.shape)
    array = np.frombuffer(payload, dtype=header.dtype, offset=offset).reshape(header.shape)
    return array.astype(header.dtype.newbyteorder("="), copy=True)


def encode(array: np.ndarray) -> bytes:
    """The IDX payload of an array (the inverse of :func:`parse`)."""
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise IdxError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim > 255:
        raise IdxError("IDX stores at most 255 dimensions")
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=TYPE_CODES[code]).tobytes()


class Inflater:
    """Decompresses a gzip file pushed in chunks (as a download arrives, or slice by slice from a file),
    never more than ``limit`` bytes in all: more is an error (a bomb or the wrong file), not a wait.
    Output is capped per call, so memory stays a chunk or two whatever the file holds. Takes several
    members and the zero padding some tools append, as ``gzip`` does."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.member = zlib.decompressobj(wbits=31)

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        try:
            while data:
                if self.member.eof:  # between members: zero padding, or the next member
                    data = bytes(data).lstrip(b"\0")
                    if not data:
                        return
                    self.member = zlib.decompressobj(wbits=31)
                yield from self._inflate(data)
                data = self.member.unused_data if self.member.eof else b""
        except zlib.error as error:
            raise IdxError(f"not a valid gzip stream: {error}") from error

    def _inflate(self, data: bytes | memoryview) -> Iterator[bytes]:
        while True:
            wanted = min(_CHUNK, self.limit + 1 - self.size)  # >= 1: 0 would mean "no limit"
            chunk = self.member.decompress(data, wanted)
            self.size += len(chunk)
            if self.size > self.limit:
                raise _TooLong(f"decompresses to more than the {self.limit} bytes expected")
            yield chunk
            data = self.member.unconsumed_tail
            if self.member.eof or (not data and len(chunk) < wanted):  # a full chunk may leave output
                return

    def finish(self) -> None:
        """The file has ended: it must have ended with a whole member."""
        if not self.member.eof:
            raise IdxError("not a valid gzip stream: it ends before its end-of-stream marker")


def inflate(data: bytes | mmap.mmap, limit: int) -> Iterator[bytes]:
    """The decompressed bytes of a whole gzip file, chunk by chunk, through :class:`Inflater`. Input goes
    in by slices, so a memory-mapped file's pages are released as they are consumed (see
    :func:`release_pages`)."""
    inflater, view = Inflater(limit), memoryview(data)
    for offset in range(0, len(view), _CHUNK):
        yield from inflater.feed(view[offset : offset + _CHUNK])
        if isinstance(data, mmap.mmap):
            data.madvise(mmap.MADV_DONTNEED)
    inflater.finish()


def payload_digest(data: bytes, limit: int) -> tuple[int, str]:
    """(size, sha256) of a gzip file's payload, streamed: the payload is never held whole."""
    digest, size = hashlib.sha256(), 0
    for chunk in inflate(data, limit):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class Parsed:
    """What :func:`gunzip_to_npy` learnt while streaming: enough to check and version the array
    without reading it back."""

    dtype: np.dtype
    """In native byte order, as stored."""
    shape: tuple[int, ...]
    payload_sha256: str
    """Also the array's content version: the array is a pure function of the payload (and the code)."""
    maximum: int | float
    """Largest value (0 for an empty array), for range checks."""


def _gzip_header(data: bytes | mmap.mmap, max_bytes: int) -> IdxHeader:
    """The IDX header at the start of a gzip file, refused if it promises more than ``max_bytes``."""
    start = data if isinstance(data, bytes) else data[:_CHUNK]  # a map is not copied whole
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(start)) as stream:
            head = stream.read(4)
            ndim = head[3] if len(head) == 4 else 0
            head += stream.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as error:
        raise IdxError(f"not a valid gzip stream: {error}") from error
    header = read_header(head)
    if header.size > max_bytes:
        raise IdxError(f"header declares {header.size} bytes, more than the {max_bytes} allowed")
    return header


def gunzip_to_npy(data: bytes | mmap.mmap, sink: BinaryIO, max_bytes: int = MAX_PAYLOAD) -> Parsed:
    """Write a gzipped IDX file to ``sink`` as a ``.npy`` file (native byte order), in chunks: the
    header gives the shape, so the ``.npy`` header goes first and the values follow as they inflate.
    Memory stays at a few MiB whatever the size; the payload sha256 is computed on the way (the only
    hash of these bytes: it versions the array too). Refuses what :func:`parse` refuses, with the same
    messages; on a refusal ``sink`` holds a partial file, which the caller discards."""
    header = _gzip_header(data, max_bytes)
    declared, native = header.size, header.dtype.newbyteorder("=")
    np.lib.format.write_array_header_1_0(
        sink, {"descr": np.lib.format.dtype_to_descr(native), "fortran_order": False, "shape": header.shape}
    )
    payload = hashlib.sha256()
    skip, carry, received, maximum = 4 + 4 * len(header.shape), b"", 0, 0
    try:
        for chunk in inflate(data, declared):
            payload.update(chunk)
            received += len(chunk)
            body = carry + chunk[skip:] if carry else chunk[skip:]
            skip = max(0, skip - len(chunk))
            whole = len(body) - len(body) % native.itemsize  # a value may straddle two chunks
            array = np.frombuffer(body, header.dtype, count=whole // native.itemsize).astype(native)
            carry = body[whole:]
            if array.size:
                maximum = max(maximum, array.max().item())
            sink.write(array.data)
    except _TooLong:
        raise IdxError(
            f"payload has trailing bytes: header {header.dtype.str}{list(header.shape)} declares {declared} "
            f"bytes, the file decompresses to more than the {declared} bytes (decompression stopped there)"
        ) from None
    if received < declared:
        raise IdxError(
            f"payload truncated: header {header.dtype.str}{list(header.shape)} needs "
            f"{declared} bytes, got {received}"
        )
    return Parsed(native, header.shape, payload.hexdigest(), maximum)


def parse_gzip(data: bytes, max_bytes: int = MAX_PAYLOAD) -> tuple[np.ndarray, str]:
    """(array, payload sha256) of a gzipped IDX file, decompressing no more than its header declares
    (:func:`gunzip_to_npy` into memory: for small files and tests; the ``idx`` asset streams)."""
    sink = io.BytesIO()
    parsed = gunzip_to_npy(data, sink, max_bytes)
    sink.seek(0)
    return np.load(sink, allow_pickle=False), parsed.payload_sha256


def release_pages(array: np.ndarray) -> None:
    """Let the kernel take back the pages read so far of a memory-mapped array (they stay in the page
    cache, so reading them again costs no disk I/O): otherwise every page once read counts in this
    process's resident memory until the map is closed, and one pass over a file grows it to the file's
    size. Does nothing for an array in memory."""
    mapping = getattr(array, "_mmap", None)  # set by np.load(mmap_mode=...) on the np.memmap it returns
    if isinstance(mapping, mmap.mmap):
        mapping.madvise(mmap.MADV_DONTNEED)
