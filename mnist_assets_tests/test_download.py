import dataclasses
import gzip
import hashlib
import re
import shutil
import time
import tracemalloc
import zlib
from urllib.parse import urlsplit

import dagster as dg
import numpy as np
import pytest

from mnist_assets import download, hashing, idx
from mnist_assets.assets import dataset_assets
from mnist_assets.catalog import load_catalog, parse_catalog
from mnist_assets.rebuild.judgement import JUDGEMENT
from mnist_assets.storage.io_managers import GzipIOManager, io_managers
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, REAL_MNIST, mini_catalog_document, real_mnist_file

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
    assert download.verify(original, pinned) == hashing.sha256(gzip.decompress(original))
    with pytest.raises(idx.IdxError, match="gzip md5"):
        download.verify(gzip.compress(gzip.decompress(original), 1), pinned)


def test_disallowed_scheme_is_refused_without_a_request(mnist):
    file = mnist.files["test-labels"]
    with pytest.raises(download.DownloadError, match="scheme 'ftp' is not allowed"):
        download.fetch(mnist, file, ["ftp://127.0.0.1/x.gz"], FAST)


class Log:
    """What a download reports, kept by kind (``context.log`` stands in for this in the asset)."""

    def __init__(self):
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, message: str):
        self.infos.append(message)

    def warning(self, message: str):
        self.warnings.append(message)


def test_a_small_download_logs_one_line(mnist, mirrors):
    file = mnist.files["test-labels"]
    log = Log()
    download.fetch(mnist, file, [mirrors["original"] + file.filename], FAST, log=log)
    assert len(log.infos) == 1 and log.warnings == []
    assert re.fullmatch(
        rf"mnist/test-labels: {re.escape(mirrors['original'])}\S+: 4\.5 KB in [\d.]+ s \([\d.]+ \w+/s\), "
        "payload verified",
        log.infos[0],
    )


@pytest.fixture
def big(mnist, http_server, tmp_path):
    """A 4 MB file served over loopback HTTP (incompressible: several 1 MiB chunks) and its pin."""
    payload = np.random.default_rng(0).bytes(4 << 20)
    body = gzip.compress(payload, 1)
    (tmp_path / "big.gz").write_bytes(body)
    url = http_server.mount(f"big-{tmp_path.name}", tmp_path) + "big.gz"
    file = mnist.files["test-images"].model_copy(
        update={"filename": "big.gz", "payload_size": len(payload), "payload_sha256": hashing.sha256(payload)}
    )
    yield {"url": url, "path": urlsplit(url).path, "body": body, "file": file}
    http_server.faults.pop(urlsplit(url).path, None)


def test_a_slow_download_logs_progress_at_most_once_per_interval_then_a_last_line(mnist, big, http_server):
    url, file, body = big["url"], big["file"], big["body"]
    http_server.faults[big["path"]] = "slow"  # 64 KiB per pause: at least 0.16 s per 1 MiB chunk
    log, every = Log(), 0.1
    started = time.monotonic()
    fetched = download.fetch(mnist, file, [url], dataclasses.replace(FAST, progress_seconds=every), log=log)
    elapsed = time.monotonic() - started

    assert fetched.gzip_bytes == body and log.warnings == []
    *progress, last = log.infos
    # the first MiB cannot arrive sooner than 16 pauses after the start, later than one interval: a line
    # is due; lines are an interval apart, so no more than fit in the time the whole download took
    assert 1 <= len(progress) <= elapsed / every
    line = rf"mnist/test-images: {re.escape(url)}: [\d.]+ MB of 4\.2 MB \((\d+)%\), [\d.]+ MB/s"
    shown = [int(re.fullmatch(line, p)[1]) for p in progress]
    assert shown == sorted(shown) and shown[-1] < 100
    assert re.fullmatch(
        rf"mnist/test-images: {re.escape(url)}: 4\.2 MB in [\d.]+ s \([\d.]+ MB/s\), payload verified", last
    )


def _materialize_raw_gzip(dataset, root, instance, key):
    return dg.materialize(
        dataset_assets(dataset, JUDGEMENT),
        selection=[dg.AssetKey([dataset.id, "raw_gzip"])],
        partition_key=key,
        instance=instance,
        resources=io_managers(str(root)),
        raise_on_error=False,
    )


@pytest.fixture
def mini(mini_mirror, http_server, tmp_path):
    """The mini dataset served from a mirror of this test's own, with an empty storage root."""
    mirror = tmp_path / "mirror"
    shutil.copytree(mini_mirror["directory"], mirror)
    url = http_server.mount(f"stream-{tmp_path.name}", mirror)
    dataset = parse_catalog(mini_catalog_document(mini_mirror, [url]))["mini_mnist"]
    path = urlsplit(url).path + MINI_FILENAMES["test-images"]
    yield {"dataset": dataset, "root": tmp_path / "artifacts", "mirror": mirror, "path": path}
    http_server.faults.pop(path, None)


def test_raw_gzip_streams_into_storage_with_the_payload_sha256_as_its_data_version(mini, mini_mirror):
    dataset, stored = mini["dataset"], mini["root"] / "mini_mnist/raw_gzip/test-images.gz"
    with dg.instance_for_test() as instance:
        result = _materialize_raw_gzip(dataset, mini["root"], instance, "test-images")
        assert result.success
        (materialization,) = result.asset_materializations_for_node("mini_mnist__raw_gzip")
    assert stored.read_bytes() == (mini["mirror"] / MINI_FILENAMES["test-images"]).read_bytes()
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]
    pinned = mini_mirror["files"]["test-images"]["payload_sha256"]
    assert materialization.tags["dagster/data_version"] == pinned
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["payload_sha256"] == pinned and metadata["bytes"] == stored.stat().st_size
    assert metadata["path"] == str(stored) and metadata["url"].endswith(MINI_FILENAMES["test-images"])


def test_a_retried_download_starts_its_staged_file_afresh(mnist, big, http_server, tmp_path):
    http_server.faults[big["path"]] = ["short"]  # 2 MB (two chunks written), closed, then the whole body
    store = GzipIOManager(root=str(tmp_path / "artifacts"))
    log = Log()
    with store.staged(dg.AssetKey(["mnist", "raw_gzip"]), "test-images") as staged:
        fetched = download.fetch_into(staged.restart, mnist, big["file"], [big["url"]], FAST, log=log)
        stored = staged.commit()
    assert len(log.warnings) == 1 and "connection closed after 2" in log.warnings[0]
    assert fetched.gzip_size == len(big["body"]) == stored.metadata["bytes"]
    assert (tmp_path / "artifacts/mnist/raw_gzip/test-images.gz").read_bytes() == big["body"]
    assert [p.name for p in (tmp_path / "artifacts/mnist/raw_gzip").iterdir()] == ["test-images.gz"]


def test_a_rejected_download_leaves_no_temporary_file_and_keeps_the_stored_gzip(mini, http_server):
    stored = mini["root"] / "mini_mnist/raw_gzip/test-images.gz"
    with dg.instance_for_test() as instance:
        assert _materialize_raw_gzip(mini["dataset"], mini["root"], instance, "test-images").success
        good = stored.read_bytes()
        # a damaged copy on the mirror: written to the staged file as it arrives, then refused
        damaged = bytearray(good)
        damaged[len(damaged) // 2] ^= 0x20
        (mini["mirror"] / MINI_FILENAMES["test-images"]).write_bytes(bytes(damaged))
        result = _materialize_raw_gzip(mini["dataset"], mini["root"], instance, "test-images")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "mini_mnist: could not fetch test-images" in str(failure.step_failure_data.error)
    assert "content rejected" in str(failure.step_failure_data.error)
    assert stored.read_bytes() == good
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]


def test_several_members_and_zero_padding_verify_as_gzip_reads_them(mnist):
    payload = np.random.default_rng(1).bytes(3 << 20)  # members and padding straddle 1 MiB chunks
    split = len(payload) // 3
    data = gzip.compress(payload[:split], 6) + bytes(1000) + gzip.compress(payload[split:], 1) + bytes(7)
    assert gzip.decompress(data) == payload
    pinned = mnist.files["test-images"].model_copy(
        update={"payload_size": len(payload), "payload_sha256": hashing.sha256(payload)}
    )
    assert download.verify(data, pinned) == hashing.sha256(payload)
    with pytest.raises(idx.IdxError, match="ends before its end-of-stream marker"):
        download.verify(data[: -7 - 4], pinned)  # the padding and the second member's size field cut
    with pytest.raises(idx.IdxError, match="not a valid gzip stream"):
        download.verify(data + b"<html>", pinned)  # not padding, not a member


def test_a_decompression_bomb_is_refused_while_it_streams_in_flat_memory(mnist, http_server, tmp_path):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 512 MiB of zeros in about 0.5 MB of gzip
    zeros = bytes(1 << 24)
    bomb = b"".join([*(compressor.compress(zeros) for _ in range(32)), compressor.flush()])
    (tmp_path / "bomb.gz").write_bytes(bomb)
    url = http_server.mount(f"bomb-{tmp_path.name}", tmp_path) + "bomb.gz"
    pinned = mnist.files["test-images"].model_copy(
        update={"filename": "bomb.gz", "payload_size": 1 << 20}  # small enough to pass the size limit
    )
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(download.DownloadError) as refused:
            download.fetch(mnist, pinned, [url], FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"content rejected: payload is more than the pinned payload_size {1 << 20} bytes" in str(
        refused.value
    )
    assert peak < 16 * 2**20


def _wrong_sha256(pins: dict) -> dict:
    return {**pins, "payload_sha256": hashlib.sha256(b"another file").hexdigest()}


def _by_gzip_md5(pins: dict) -> dict:
    return {k: v for k, v in pins.items() if k != "payload_sha256"} | {
        "gzip_md5": hashlib.md5(b"x").hexdigest()
    }


@scenario(
    "Files",
    "A catalog entry whose pin is wrong (payload_sha256, payload_size too small or too large, gzip_md5): "
    "the likeliest mistake in a freshly added entry",
    "The download fails naming the dataset, the file key, the found value against the pin, and says: "
    "if you added or edited this entry, fix that key; if the pin is right, the mirror serves other bytes",
    "Nothing is stored",
)
@pytest.mark.parametrize(
    "wrong, pin, found",
    [
        (
            _wrong_sha256,
            "payload_sha256",
            r"payload sha256 (?P<digest>[0-9a-f]{64}) ≠ pinned payload_sha256 ",
        ),
        (
            lambda p: {**p, "payload_size": p["payload_size"] - 1},
            "payload_size",
            "payload is more than the pinned",
        ),
        (
            lambda p: {**p, "payload_size": p["payload_size"] + 1},
            "payload_size",
            r"payload is \d+ bytes ≠ pinned",
        ),
        (_by_gzip_md5, "gzip_md5", r"gzip md5 [0-9a-f]{32} ≠ pinned gzip_md5 9dd4e461…"),
    ],
    ids=["payload_sha256", "payload_size-small", "payload_size-large", "gzip_md5"],
)
def test_a_wrong_pin_is_named_with_what_was_found_and_both_ways_to_fix_it(mini_mirror, wrong, pin, found):
    document = mini_catalog_document(mini_mirror, [str(mini_mirror["directory"])])
    files = document["datasets"]["mini_mnist"]["files"]
    files["test-labels"] = wrong(files["test-labels"])
    dataset = parse_catalog(document)["mini_mnist"]  # a valid entry: only the pin's value is wrong
    urls = dataset.file_urls(dataset.resolve_mirrors())["test-labels"]
    with pytest.raises(download.DownloadError) as refused:
        download.fetch(dataset, dataset.file("test-labels"), urls, FAST)
    message = str(refused.value)
    assert message.startswith("mini_mnist: could not fetch test-labels (t10k-labels-idx1-ubyte.gz)")
    assert re.search(rf"\(attempt 1\): content rejected: {found}", message), message
    assert (
        f"What to do: if you added or edited this entry, fix {pin} of mini_mnist/files/test-labels in the "
        "catalog entry; if the pin is right, the mirror serves other bytes: point MNIST_ASSETS_MIRROR_"
    ) in message
    if digest := re.search(found, message).groupdict().get("digest"):  # whole: the pin can be fixed from it
        assert digest == mini_mirror["files"]["test-labels"]["payload_sha256"]


def test_a_download_failure_reaches_the_refresh_summary_as_its_sentence_without_a_class_path(empty_project):
    files = empty_project.dataset["files"]
    files["train-labels"] = _wrong_sha256(files["train-labels"])
    summary, _ = empty_project.refresh()
    (failed,) = summary.failed
    assert (failed.asset, failed.partition) == ("mini_mnist/raw_gzip", "train-labels")
    assert failed.error.startswith("mini_mnist: could not fetch train-labels (train-labels-idx1-ubyte.gz)")
    assert "fix payload_sha256 of mini_mnist/files/train-labels" in failed.error
    assert "DownloadError" not in failed.error
    # Dagster records it as a failure raised on purpose: the sentence is the step failure's description
    (run,) = [r for r in empty_project.instance.get_runs() if "train-labels" in str(r.tags.values())]
    (event,) = [
        e.dagster_event
        for e in empty_project.instance.all_logs(run.run_id)
        if e.dagster_event is not None and e.dagster_event.is_step_failure
    ]
    assert event.step_failure_data.user_failure_data.description == failed.error
