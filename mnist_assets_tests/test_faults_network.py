"""Bad networks, injected per request by the loopback server, against the real MNIST t10k labels."""

from __future__ import annotations

import dataclasses
import re
import socket

import pytest

from mnist_assets import download
from mnist_assets.catalog import load_catalog, redact_url
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import REAL_MNIST, real_mnist_file

POLICY = download.FetchPolicy(
    connect_timeout=2, read_timeout=1, attempts=2, backoff_seconds=0.01, max_redirects=3
)


@pytest.fixture
def net(http_server, tmp_path):
    """Two mirrors of the same real file, ``a`` and ``b``, with faults cleared for this test."""
    original = real_mnist_file("t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "t10k-labels-idx1-ubyte.gz").write_bytes(original)
    dataset = load_catalog()["mnist"]
    file = dataset.files["test-labels"]
    base = {
        "a": http_server.mount(f"a-{tmp_path.name}", REAL_MNIST),
        "b": http_server.mount(f"b-{tmp_path.name}", tmp_path / "b"),
    }
    urls = {name: url + file.filename for name, url in base.items()}
    paths = {name: "/" + url.split("/", 3)[3] for name, url in urls.items()}
    yield {
        "dataset": dataset,
        "file": file,
        "urls": urls,
        "paths": paths,
        "server": http_server,
        "original": original,
    }
    for path in paths.values():
        http_server.faults.pop(path, None)


def fetch(net, *mirrors, log=None):
    return download.fetch(net["dataset"], net["file"], [net["urls"][m] for m in mirrors], POLICY, log=log)


def requests_to(net, mirror, before) -> int:
    return net["server"].requests[net["paths"][mirror]] - before.get(mirror, 0)


def counts(net) -> dict[str, int]:
    return {m: net["server"].requests[p] for m, p in net["paths"].items()}


class Warnings:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, message: str): ...  # progress lines: these tests count the warnings

    def warning(self, message: str):
        self.lines.append(message)


@scenario(
    "Network",
    "HTTP 500, then the file",
    "A warning per failed attempt; the retry succeeds",
    "The file, byte-identical",
)
def test_a_server_error_is_retried_and_the_file_accepted(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = [500]
    log = Warnings()
    fetched = fetch(net, "a", log=log)
    assert fetched.gzip_bytes == net["original"]
    assert requests_to(net, "a", before) == 2
    assert len(log.lines) == 1 and "HTTP 500" in log.lines[0] and "mnist/test-labels" in log.lines[0]


@scenario(
    "Network",
    "HTTP 404 on the first mirror",
    "Falls back to the next mirror at once (a 404 is not retried)",
    "The file from the next mirror",
)
def test_a_missing_file_falls_back_to_the_next_mirror(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = 404
    fetched = fetch(net, "a", "b")
    assert fetched.url == net["urls"]["b"] and fetched.gzip_bytes == net["original"]
    assert requests_to(net, "a", before) == 1


@scenario(
    "Network",
    "Connection reset (TCP RST) in the middle of the body",
    "The attempt fails as a connection error and is retried",
    "The file, once a whole copy arrives",
)
def test_a_connection_reset_mid_body_is_retried(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = ["reset"]
    log = Warnings()
    assert fetch(net, "a", log=log).gzip_bytes == net["original"]
    assert requests_to(net, "a", before) == 2
    assert len(log.lines) == 1 and "connection reset by the server mid-body" in log.lines[0]


@scenario(
    "Network",
    "A body shorter than its Content-Length (server closes early)",
    "The short read is detected and retried; never accepted as the file",
    "The file, once whole",
)
def test_a_short_body_is_detected_and_retried(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = ["short"]
    log = Warnings()
    assert fetch(net, "a", log=log).gzip_bytes == net["original"]
    assert requests_to(net, "a", before) == 2
    assert len(log.lines) == 1 and re.search(r"connection closed after \d+ of \d+ bytes", log.lines[0])
    net["server"].faults[net["paths"]["a"]] = "short"
    with pytest.raises(download.DownloadError) as error:
        fetch(net, "a")
    assert str(error.value).count(net["urls"]["a"]) == POLICY.attempts


@scenario(
    "Network",
    "Bytes corrupted in flight (one flipped byte, right length)",
    "`content rejected` by the gzip integrity check, not retried; the next mirror is used",
    "The verified file only",
)
def test_bytes_corrupted_in_flight_are_rejected_by_the_checksum(net):
    # a flipped byte never reaches the payload sha256: gzip's deflate/CRC-32 check catches every
    # one-byte error
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = "corrupt"
    log = Warnings()
    fetched = fetch(net, "a", "b", log=log)
    assert fetched.url == net["urls"]["b"] and fetched.gzip_bytes == net["original"]
    assert requests_to(net, "a", before) == 1
    assert len(log.lines) == 1 and "content rejected: not a valid gzip stream" in log.lines[0]
    with pytest.raises(download.DownloadError, match="content rejected"):
        fetch(net, "a")


@scenario(
    "Network",
    "A server that sends headers, then stalls",
    "`timed out` after the read timeout, retried, then the next mirror",
    "The file from a mirror that answers",
)
def test_a_stalled_server_times_out_and_the_next_mirror_is_used(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = "stall"
    log = Warnings()
    fetched = fetch(net, "a", "b", log=log)
    assert fetched.url == net["urls"]["b"]
    assert requests_to(net, "a", before) == POLICY.attempts
    assert len(log.lines) == POLICY.attempts and all("timed out" in line for line in log.lines)
    once = dataclasses.replace(POLICY, attempts=1)
    with pytest.raises(download.DownloadError, match=r"\(attempt 1\): .*timed out"):
        download.fetch(net["dataset"], net["file"], [net["urls"]["a"]], once)


@scenario(
    "Network",
    "A redirect loop",
    "Stopped after `max_redirects`, named, not retried; next mirror used",
    "The file from the next mirror",
)
def test_a_redirect_loop_is_bounded(net):
    before = counts(net)
    net["server"].faults[net["paths"]["a"]] = "redirect-loop"
    log = Warnings()
    assert fetch(net, "a", "b", log=log).url == net["urls"]["b"]
    assert requests_to(net, "a", before) == POLICY.max_redirects + 1
    assert "more than 3 redirects" in log.lines[0]


@scenario(
    "Network",
    "A 200 response that is not gzip (an HTML maintenance page)",
    "Rejected as `not a valid gzip stream`; the next mirror is used",
    "The verified file only",
)
def test_a_response_that_is_not_gzip_is_rejected(net):
    net["server"].faults[net["paths"]["a"]] = "not-gzip"
    log = Warnings()
    assert fetch(net, "a", "b", log=log).url == net["urls"]["b"]
    assert "not a valid gzip stream" in log.lines[0]


@scenario(
    "Network",
    "Every mirror fails, each differently",
    "One error naming the dataset, the file, every URL with each attempt's reason, and the override variable",
    "Whatever was stored before (nothing is written)",
)
def test_when_every_mirror_fails_the_error_says_what_was_tried_and_what_to_do(net):
    net["server"].faults[net["paths"]["a"]] = 503
    net["server"].faults[net["paths"]["b"]] = "not-gzip"
    with pytest.raises(download.DownloadError) as error:
        fetch(net, "a", "b")
    message = str(error.value)
    assert message.startswith(
        "mnist: could not fetch test-labels (t10k-labels-idx1-ubyte.gz) from any mirror"
    )
    assert f"{net['urls']['a']} (attempt 1): HTTP 503" in message
    assert f"{net['urls']['a']} (attempt 2): HTTP 503" in message
    assert f"{net['urls']['b']} (attempt 1): content rejected: not a valid gzip stream" in message
    assert f"{net['urls']['b']} (attempt 2)" not in message  # a rejected content is not asked for again
    assert "What to do: point MNIST_ASSETS_MIRROR_MNIST at" in message


@scenario(
    "Network",
    "Credentials or a token in a mirror URL whose fetch fails",
    "Errors and warnings show `http://***@host/path?token=***`",
    "The secret, out of every message",
)
def test_credentials_never_appear_in_download_errors_or_warnings(net):
    with socket.socket() as probe:  # a port nothing listens on: a real refused connection
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = f"http://reader:hunter2@127.0.0.1:{closed_port}/{net['file'].filename}?X-Amz-Signature=hunter3"
    failing = net["urls"]["a"].replace("http://", "http://reader:hunter2@") + "?token=hunter4"
    net["server"].faults[net["paths"]["a"] + "?token=hunter4"] = 500
    # TLS spoken to a plain-HTTP server: requests' own message quotes the path and query
    wrong_scheme = net["urls"]["b"].replace("http://", "https://reader:hunter2@") + "?sig=hunter5"
    log = Warnings()
    with pytest.raises(download.DownloadError) as error:
        download.fetch(net["dataset"], net["file"], [refused, failing, wrong_scheme], POLICY, log=log)
    message = str(error.value)
    shown = message + "\n".join(log.lines)
    assert len(log.lines) == 3 * POLICY.attempts  # refused, 500 and the TLS failure are all retried
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5", "reader"):
        assert secret not in shown
    assert f"{redact_url(refused)} (attempt 1): connection refused" in message
    assert f"{redact_url(failing)} (attempt 1): HTTP 500" in message
    assert f"{redact_url(wrong_scheme)} (attempt 1): SSLError:" in message and "?sig=***" in message
    assert redact_url(failing).startswith("http://***@127.0.0.1:") and redact_url(failing).endswith(
        "?token=***"
    )
