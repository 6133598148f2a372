import gzip
import hashlib

import numpy as np
import pytest

from mnist_assets import hashing, idx
from mnist_assets_tests.support import real_mnist_file


@pytest.mark.parametrize("code, dtype", sorted(idx.TYPE_CODES.items()))
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (2, 1, 3, 2)])
def test_every_type_code_round_trips_in_any_number_of_dimensions(code, dtype, shape):
    rng = np.random.default_rng(code)
    array = (rng.standard_normal(shape) * 100).astype(dtype.newbyteorder("="))
    payload = idx.encode(array)
    assert payload[2] == code and payload[3] == len(shape)
    assert payload[4:8] == shape[0].to_bytes(4, "big")
    parsed = idx.parse(payload)
    assert parsed.dtype == dtype.newbyteorder("=") and parsed.shape == shape
    np.testing.assert_array_equal(parsed, array)


def test_values_are_read_big_endian():
    payload = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    np.testing.assert_array_equal(idx.parse(payload), np.array([258, -2], dtype=np.int16))


def test_real_mnist_labels_parse_to_the_published_payload():
    data = real_mnist_file("train-labels-idx1-ubyte.gz").read_bytes()
    labels, digest = idx.parse_gzip(data)
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert hashlib.md5(gzip.decompress(data)).hexdigest() == "a25bea736e30d166cdddb491f175f624"
    assert digest == hashing.sha256(gzip.decompress(data))


def test_real_mnist_images_have_the_declared_shape():
    images, _ = idx.parse_gzip(real_mnist_file("t10k-images-idx3-ubyte.gz").read_bytes())
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and images.max() == 255


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "too short"),
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "bad magic"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), "unknown IDX type code 0x0a"),
        (bytes([0, 0, 8, 2, 0, 0, 0, 1]), "ends inside the header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 5]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 5, 6]), "trailing bytes"),
        (bytes([0, 0, 0x0E, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]), "truncated"),
    ],
)
def test_malformed_payloads_are_rejected_with_the_reason(payload, message):
    with pytest.raises(idx.IdxError, match=message):
        idx.parse(payload)


def test_gzip_decompression_stops_at_the_size_the_header_declares():
    header = idx.encode(np.zeros(4, dtype=np.uint8))
    bomb = gzip.compress(header + bytes(50_000_000))
    with pytest.raises(idx.IdxError, match="more than the 12 bytes"):
        idx.parse_gzip(bomb)


def test_absurd_declared_size_is_rejected_before_decompressing():
    absurd = gzip.compress(bytes([0, 0, 0x0E, 2, 255, 255, 255, 255, 255, 255, 255, 255]))
    with pytest.raises(idx.IdxError, match="more than the .* allowed"):
        idx.parse_gzip(absurd)


def test_not_gzip_is_a_clear_error():
    with pytest.raises(idx.IdxError, match="not a valid gzip"):
        idx.parse_gzip(b"<html>not found</html>")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28),
        np.arange(700_000 * 3, dtype=np.float64).reshape(700_000, 3) - 5.5,  # > 4 MiB, 12-byte header
        np.arange(-5, 2_000_000, dtype=np.int32),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=["u1", "f8-straddling-chunks", "i4-big", "empty"],
)
def test_streaming_to_npy_gives_the_same_file_digests_and_array_as_parsing_whole(array, tmp_path):
    """The idx asset's path (chunked inflate straight into the .npy) writes what np.save writes and hashes
    the payload on the way (its data version)."""
    payload = idx.encode(array)
    with (tmp_path / "a.npy").open("wb") as sink:
        parsed = idx.gunzip_to_npy(gzip.compress(payload, compresslevel=1), sink)
    whole = idx.parse(payload)
    assert parsed.payload_sha256 == hashing.sha256(payload)
    assert (parsed.dtype, parsed.shape) == (whole.dtype, whole.shape)
    assert parsed.maximum == (whole.max().item() if whole.size else 0)
    np.save(tmp_path / "b.npy", whole, allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r", allow_pickle=False)
    np.testing.assert_array_equal(mapped, whole)
