import gzip
import hashlib

import pytest

from mnist_assets import download, idx
from mnist_assets.catalog import load_catalog
from mnist_assets_tests.conftest import REAL_MNIST, real_mnist_file

FAST = download.FetchPolicy(connect_timeout=2, read_timeout=5, attempts=2, backoff_seconds=0.01)


@pytest.fixture
def mnist():
    return load_catalog()["mnist"]


@pytest.fixture
def mirrors(http_server, tmp_path):
    """Three mirrors of the real t10k labels: the original, a re-compressed copy, a damaged copy."""
    original = real_mnist_file("t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "recompressed").mkdir()
    (tmp_path / "damaged").mkdir()
    payload = gzip.decompress(original)
    (tmp_path / "recompressed" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(payload, 9, mtime=1))
    flipped = bytearray(payload)
    flipped[5000] ^= 0x01
    (tmp_path / "damaged" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(flipped)))
    return {
        "original": http_server.mount("original", REAL_MNIST),
        "recompressed": http_server.mount("recompressed", tmp_path / "recompressed"),
        "damaged": http_server.mount("damaged", tmp_path / "damaged"),
        "empty": http_server.mount("empty", tmp_path),
        "server": http_server,
    }


def test_real_file_is_fetched_over_http_and_kept_byte_for_byte(mnist, mirrors):
    file = mnist.files["test-labels"]
    fetched = download.fetch(mnist, file, [mirrors["original"] + file.filename], FAST)
    assert fetched.gzip_bytes == real_mnist_file(file.filename).read_bytes()
    assert fetched.payload_sha256 == file.payload_sha256


def test_recompressed_mirror_is_accepted_because_the_payload_is_pinned(mnist, mirrors):
    file = mnist.files["test-labels"]
    fetched = download.fetch(mnist, file, [mirrors["recompressed"] + file.filename], FAST)
    assert fetched.gzip_bytes != real_mnist_file(file.filename).read_bytes()
    assert fetched.payload_sha256 == file.payload_sha256


def test_damaged_and_missing_mirrors_fall_back_to_the_next(mnist, mirrors):
    file = mnist.files["test-labels"]
    urls = [mirrors[m] + file.filename for m in ("empty", "damaged", "original")]
    requests = mirrors["server"].requests
    before = {m: requests[f"/{m}/{file.filename}"] for m in ("empty", "damaged")}
    fetched = download.fetch(mnist, file, urls, FAST)
    assert fetched.url == urls[2]
    # a 404 and a checksum mismatch are not retried: asking again gives the same answer
    assert {m: requests[f"/{m}/{file.filename}"] - before[m] for m in before} == {"empty": 1, "damaged": 1}


def test_a_server_error_is_retried_on_the_same_mirror(mnist, mirrors):
    file = mnist.files["test-labels"]
    path = "/original/" + file.filename
    before = mirrors["server"].requests[path]
    mirrors["server"].faults[path] = [500]
    fetched = download.fetch(mnist, file, [mirrors["original"] + file.filename], FAST)
    assert fetched.payload_sha256 == file.payload_sha256
    assert mirrors["server"].requests[path] - before == 2


def test_no_good_mirror_is_an_error_naming_dataset_file_every_url_and_the_fix(mnist, mirrors):
    file = mnist.files["test-labels"]
    urls = [mirrors[m] + file.filename for m in ("empty", "damaged")]
    with pytest.raises(download.DownloadError) as caught:
        download.fetch(mnist, file, urls, FAST)
    message = str(caught.value)
    assert message.startswith("mnist: could not fetch test-labels (t10k-labels-idx1-ubyte.gz)")
    assert f"{urls[0]} (attempt 1): HTTP 404" in message
    assert f"{urls[1]} (attempt 1): content rejected: payload sha256" in message
    assert "MNIST_ASSETS_MIRROR_MNIST" in message


def test_local_directory_mirror_is_read_as_a_file_url(mnist):
    file = mnist.files["train-labels"]
    urls = mnist.file_urls(mnist.resolve_mirrors([str(REAL_MNIST)]))["train-labels"]
    assert urls[0].startswith("file://")
    assert download.fetch(mnist, file, urls, FAST).payload_sha256 == file.payload_sha256


def test_file_pinned_by_its_published_gzip_md5_accepts_only_those_bytes(mnist):
    original = real_mnist_file("t10k-labels-idx1-ubyte.gz").read_bytes()
    pinned = mnist.files["test-labels"].model_copy(
        update={"payload_sha256": None, "gzip_md5": hashlib.md5(original).hexdigest()}
    )
    assert download.verify(original, pinned) == idx.sha256(gzip.decompress(original))
    with pytest.raises(idx.IdxError, match="gzip md5"):
        download.verify(gzip.compress(gzip.decompress(original), 1), pinned)


def test_disallowed_scheme_is_refused_without_a_request(mnist):
    file = mnist.files["test-labels"]
    with pytest.raises(download.DownloadError, match="scheme 'ftp' is not allowed"):
        download.fetch(mnist, file, ["ftp://127.0.0.1/x.gz"], FAST)
