"""Bad files: every malformed IDX, gzip or .npy file is refused with the reason, nothing is built from it.

Parser-level faults go through ``idx.parse_gzip`` (what the ``idx`` asset calls) on gzip bytes built
here, and ``idx.parse`` where the raw payload matters; the last test injects a malformed pinned file
into a real, fully materialized project.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mnist_assets import hashing, idx
from mnist_assets.storage.faults import StorageError
from mnist_assets.storage.io_managers import NumpyIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES

SMALL_PEAK = 10 * 2**20
"""Bytes of Python/numpy memory a refused file may cost at most while being parsed."""


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def _labels_payload(count: int = 6) -> bytes:
    return idx.encode(np.arange(count, dtype=np.uint8))


def _refusal(call, *args, **kwargs) -> tuple[str, int]:
    """The IdxError message ``call`` raises, and the peak memory traced while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(idx.IdxError) as raised:
            call(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(raised.value), peak


@scenario(
    "Files",
    "An IDX file whose first two bytes are not zero (wrong magic)",
    "IdxError: bad magic number, with the bytes seen",
    "Nothing is parsed",
)
def test_wrong_magic_is_refused_naming_the_bytes():
    payload = bytearray(_labels_payload())
    payload[0] = 0x1F
    for message in (_refusal(idx.parse_gzip, _gz(bytes(payload)))[0], _refusal(idx.parse, bytes(payload))[0]):
        assert message.startswith("bad magic number 0x1f000801")
        assert "expected 0x0000 then type code" in message


@scenario(
    "Files",
    "An IDX header with an unknown type code",
    "IdxError: unknown IDX type code, with the code",
    "Nothing is parsed",
)
def test_unknown_type_code_is_refused_naming_the_code():
    payload = bytearray(_labels_payload())
    payload[2] = 0x0A
    for message in (_refusal(idx.parse_gzip, _gz(bytes(payload)))[0], _refusal(idx.parse, bytes(payload))[0]):
        assert message == "unknown IDX type code 0x0a"


@scenario(
    "Files",
    "A truncated payload (the header promises more values than follow)",
    "IdxError: payload truncated, bytes needed and bytes present",
    "Nothing is parsed",
)
def test_truncated_payload_is_refused_with_needed_and_present_sizes():
    whole = idx.encode(np.arange(100, dtype=np.uint8).reshape(4, 25))
    cut = whole[:-30]
    expected = f"payload truncated: header |u1[4, 25] needs {len(whole)} bytes, got {len(cut)}"
    assert _refusal(idx.parse_gzip, _gz(cut))[0] == expected
    assert _refusal(idx.parse, cut)[0] == expected
    # the whole file parses: the refusal is about the missing bytes, nothing else
    np.testing.assert_array_equal(idx.parse_gzip(_gz(whole))[0], np.arange(100).reshape(4, 25))


@scenario(
    "Files",
    "Trailing bytes after the payload the header declares",
    "IdxError: payload has trailing bytes, with the declared size",
    "Nothing is parsed",
)
def test_trailing_bytes_are_refused_naming_the_declared_size():
    whole = _labels_payload()
    padded = whole + b"\x00\x07"
    message = _refusal(idx.parse_gzip, _gz(padded))[0]
    assert "trailing bytes" in message and f"declares {len(whole)} bytes" in message
    # also when the caller's cap (the catalog's payload_size) would allow the longer file
    message = _refusal(idx.parse_gzip, _gz(padded), max_bytes=len(padded))[0]
    assert "trailing bytes" in message and f"declares {len(whole)} bytes" in message
    assert _refusal(idx.parse, padded)[0] == (
        f"payload has trailing bytes: header |u1[6] needs {len(whole)} bytes, got {len(padded)}"
    )


@scenario(
    "Files",
    "A header whose dimensions multiply to an absurd size (4 dims of 2^31)",
    "IdxError: header declares more bytes than allowed, before any allocation",
    "Nothing is parsed; traced memory peak under 10 MB",
)
def test_absurd_dimensions_are_refused_before_any_large_allocation():
    header = bytes([0, 0, 0x0E, 4]) + (2**31).to_bytes(4, "big") * 4
    declared = 4 + 16 + 2**124 * 8
    message, peak = _refusal(idx.parse_gzip, _gz(header + bytes(64)))
    assert message == f"header declares {declared} bytes, more than the {idx.MAX_PAYLOAD} allowed"
    assert peak < SMALL_PEAK
    message, peak = _refusal(idx.parse_gzip, _gz(header + bytes(64)), max_bytes=10_000)
    assert "more than the 10000 allowed" in message and peak < SMALL_PEAK
    message, peak = _refusal(idx.parse, header + bytes(64))
    assert message.startswith(
        f"payload truncated: header >f8[{', '.join(['2147483648'] * 4)}] needs {declared}"
    )
    assert peak < SMALL_PEAK


def _bomb(header: bytes, zeros: int) -> bytes:
    """gzip of ``header`` then ``zeros`` zero bytes, built in chunks so this test never holds them."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
    parts = [compressor.compress(header)]
    chunk = bytes(1 << 24)
    for _ in range(zeros // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    return b"".join(parts)


@scenario(
    "Files",
    "A decompression bomb (1 GiB of zeros behind a header declaring 12 bytes)",
    "IdxError: trailing bytes past the declared size; decompression stops there",
    "Nothing is parsed; traced memory peak under 10 MB",
)
def test_a_decompression_bomb_stops_at_the_size_the_header_declares():
    header = idx.encode(np.zeros(4, dtype=np.uint8))
    bomb = _bomb(header, 1 << 30)
    assert len(bomb) < 8 * 2**20  # small on disk ...
    probe = zlib.decompressobj(31)
    assert len(probe.decompress(bomb[: 1 << 16], 1 << 20)) == 1 << 20  # ... but far more than 12 bytes inside

    message, peak = _refusal(idx.parse_gzip, bomb)
    assert "trailing bytes" in message and "declares 12 bytes" in message
    assert peak < SMALL_PEAK
    message, peak = _refusal(idx.payload_digest, bomb, 1000)
    assert message == "decompresses to more than the 1000 bytes expected" and peak < SMALL_PEAK


@scenario(
    "Files",
    "An empty file (0 bytes), or a gzip of 0 bytes",
    "IdxError: too short for an IDX header (0 bytes)",
    "Nothing is parsed",
)
def test_an_empty_file_and_an_empty_gzip_are_refused():
    empty_gzip = _gz(b"")
    assert len(empty_gzip) > 0 and gzip.decompress(empty_gzip) == b""
    for data in (b"", empty_gzip):
        assert _refusal(idx.parse_gzip, data)[0] == "too short for an IDX header (0 bytes)"
    assert _refusal(idx.parse, b"")[0] == "too short for an IDX header (0 bytes)"


def _leave_marker(path: str) -> str:
    Path(path).write_text("unpickled")
    return path


class _Payload:
    """Unpickling this runs ``_leave_marker``: the observable stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _leave_marker, (self.marker,)


@scenario(
    "Files",
    "A .npy artifact that holds a pickle (object array) where the idx array is read",
    "StorageError: not a plain .npy array, with the path",
    "Nothing is unpickled (no code runs)",
)
def test_an_npy_holding_a_pickle_is_refused_without_unpickling(tmp_path):
    store = NumpyIOManager(root=str(tmp_path / "artifacts"))
    directory = store.asset_dir(dg.AssetKey(["mini_mnist", "idx"]))
    path = store.record_path(directory, "train-labels")
    directory.mkdir(parents=True)
    marker = tmp_path / "unpickled.marker"
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    assert not marker.exists()

    with pytest.raises(StorageError) as raised:
        store.read(directory, "train-labels", "mini_mnist/idx[train-labels]")
    message = str(raised.value)
    assert message.startswith(f"mini_mnist/idx[train-labels]: {path} is not a plain .npy array")
    assert "allow_pickle=False" in message
    problem = store.verify(dg.AssetKey(["mini_mnist", "idx"]), "train-labels")
    assert problem is not None and "not a plain .npy array" in problem
    assert not marker.exists()

    # the control: the same file, loaded the unsafe way, does run the payload
    np.load(path, allow_pickle=True)
    assert marker.read_text() == "unpickled"


@scenario(
    "Files",
    "The catalog pins files whose IDX content is malformed (truncated; trailing bytes)",
    "idx fails per file naming dataset, file key, filename, reason and What to do",
    "The previous idx arrays and every shard set",
)
def test_a_pinned_malformed_file_fails_idx_and_keeps_the_stored_array(project):
    faults = {
        "train-labels": lambda whole: whole[:-500],
        "test-labels": lambda whole: whole + bytes(16),
    }
    stored = {k: project.storage / f"mini_mnist/idx/{k}.npy" for k in faults}
    before = {k: p.read_bytes() for k, p in stored.items()}
    manifests = {p: p.read_bytes() for p in project.storage.glob("mini_mnist/shards/*/_manifest.json")}
    assert len(manifests) == 3
    sizes = {}
    for key, damage in faults.items():
        whole = idx.encode(project.arrays[key])
        payload = damage(whole)
        sizes[key] = (len(whole), len(payload))
        (project.mirror / MINI_FILENAMES[key]).write_bytes(_gz(payload))
        # the catalog now pins the malformed payload, so the download verifies and idx must refuse it
        project.dataset["files"][key].update(
            payload_size=len(payload), payload_sha256=hashing.sha256(payload)
        )

    summary, delta = project.refresh()

    assert delta == Counter({("raw_gzip", "train-labels"): 1, ("raw_gzip", "test-labels"): 1})
    failed = {s.partition: s.error for s in summary.failed}
    assert [s.asset for s in summary.failed] == ["mini_mnist/idx"] * 2 and set(failed) == set(faults)
    for key, error in failed.items():
        assert f"mini_mnist: {key} ({MINI_FILENAMES[key]}) is not a usable IDX file: " in error
        assert "The previous idx array, if any, is kept." in error and "What to do:" in error
    declared, present = sizes["train-labels"]
    assert f"header declares {declared} bytes, more than the {present} allowed" in failed["train-labels"]
    declared, _ = sizes["test-labels"]
    assert "trailing bytes" in failed["test-labels"] and f"declares {declared} bytes" in failed["test-labels"]
    assert {k: p.read_bytes() for k, p in stored.items()} == before
    assert {p: p.read_bytes() for p in manifests} == manifests
    assert not any(s.asset == "mini_mnist/shards" for s in summary.ran)
