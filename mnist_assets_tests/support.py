"""Real parts for the tests, as a library: a loopback HTTP server, small real mirrors, temporary storage,
and projects on real instances. ``conftest.py`` turns them into fixtures; test files import from here.

The small mirror is cut from the real MNIST t10k files shipped in ``data/mnist`` beside this file
(attribution, licence and checksums in its README): the first ``MINI_TRAIN`` images play the train
file, the last ``MINI_TEST`` the test file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mnist_assets import hashing, idx
from mnist_assets.catalog import FILE_KEYS, parse_catalog
from mnist_assets.definitions import build_definitions
from mnist_assets.rebuild.refresh import Refresher, refresh

REPO = Path(__file__).resolve().parents[1]


REAL_MNIST = Path(__file__).with_name("data") / "mnist"


FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


MINI_TRAIN, MINI_TEST = 2000, 500


MINI_FILENAMES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}


def _real_mnist_sums() -> dict[str, str]:
    lines = (REAL_MNIST / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def real_mnist_file(name: str) -> Path:
    """A real MNIST file shipped with the tests, refused unless it matches ``SHA256SUMS``."""
    path = REAL_MNIST / name
    expected = _real_mnist_sums().get(name)
    if expected is None or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        pytest.fail(f"test fixture {path} is missing or damaged (see {REAL_MNIST / 'SHA256SUMS'})")
    return path


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 serving directories under URL prefixes, counting requests.

    ``faults[url_path]`` injects what a bad network does, per GET: a list is consumed one fault per
    request (then the file is served normally); a bare fault, not in a list, applies to every request.
    A fault is an HTTP status (int) or one of ``FAULTS``; HEAD requests ignore them and follow
    ``head_faults[url_path]`` instead (HTTP statuses only, consumed alike). Files carry an ETag (md5 of
    the content, as S3 sends) besides Last-Modified and Content-Length.
    """

    FAULTS = ("reset", "short", "corrupt", "stall", "redirect-loop", "not-gzip", "slow")
    stall_seconds = 3.0
    slow_seconds = 0.01
    """``slow``: the pause before each 64 KiB of the body (a throttled link)."""

    def __init__(self):
        self.mounts: dict[str, Path] = {}
        self.requests: Counter[str] = Counter()
        self.faults: dict[str, list | int | str] = {}
        self.head_faults: dict[str, list[int] | int] = {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_HEAD(self):
                fault = server.next_fault(self.path, server.head_faults)
                if fault is None:
                    super().do_HEAD()
                    return
                server.requests[self.path] += 1
                self.send_error(fault)

            def do_GET(self):
                fault = server.next_fault(self.path)
                if fault is None:
                    super().do_GET()
                    return
                server.requests[self.path] += 1
                if isinstance(fault, int):
                    self.send_error(fault)
                elif fault == "redirect-loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_faulty_body(fault, Path(server.local_path(self.path)).read_bytes())

            def send_faulty_body(self, fault: str, body: bytes):
                if fault == "not-gzip":
                    body = b"<html><body>Mirror maintenance: the file will be back soon.</body></html>\n"
                elif fault == "corrupt":
                    body = (
                        body[: len(body) // 2]
                        + bytes([body[len(body) // 2] ^ 0x20])
                        + body[len(body) // 2 + 1 :]
                    )
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "stall":
                    self.wfile.flush()
                    time.sleep(server.stall_seconds)
                if fault == "slow":
                    for start in range(0, len(body), 1 << 16):
                        time.sleep(server.slow_seconds)
                        self.wfile.write(body[start : start + (1 << 16)])
                    return
                if fault in ("short", "reset"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "reset":  # SO_LINGER 0: close() sends a TCP RST, not a FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(body)

            def translate_path(self, path):
                server.requests[path] += 1
                return server.local_path(path)

            def end_headers(self):
                local = Path(server.local_path(self.path))
                if local.is_file():
                    self.send_header("ETag", f'"{hashlib.md5(local.read_bytes()).hexdigest()}"')
                super().end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a connection the fault itself closed is not a server error

        self.httpd = Server(("127.0.0.1", 0), partial(Handler, directory="/"))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_fault(self, url_path: str, table: dict | None = None):
        planned = (self.faults if table is None else table).get(url_path)
        if isinstance(planned, list):
            return planned.pop(0) if planned else None
        return planned

    def local_path(self, url_path: str) -> str:
        prefix, _, rest = url_path.lstrip("/").partition("/")
        root = self.mounts.get(prefix)
        return str(root / rest) if root else "/nonexistent"

    def mount(self, prefix: str, directory: Path) -> str:
        self.mounts[prefix] = Path(directory)
        return f"http://127.0.0.1:{self.httpd.server_port}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_idx_gz(path: Path, array: np.ndarray, level: int = 6) -> str:
    """Write an IDX gz file; returns the payload sha256."""
    payload = idx.encode(array)
    path.write_bytes(gzip.compress(payload, compresslevel=level, mtime=0))
    return hashing.sha256(payload)


def write_mini_mirror(directory: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Real t10k digits cut into a small train/test mirror in ``directory``: the directory, the catalog's
    file entries and each file's array (also what ``benchmarks/deploy_bench.py`` serves)."""
    arrays = {
        "train-images": images[:MINI_TRAIN],
        "train-labels": labels[:MINI_TRAIN],
        "test-images": images[-MINI_TEST:],
        "test-labels": labels[-MINI_TEST:],
    }
    files = {}
    for key in FILE_KEYS:
        digest = write_idx_gz(directory / MINI_FILENAMES[key], arrays[key])
        files[key] = {
            "filename": MINI_FILENAMES[key],
            "payload_size": len(idx.encode(arrays[key])),
            "payload_sha256": digest,
        }
    return {"directory": directory, "files": files, "arrays": arrays}


TINY_TRAINING = {
    "epochs": 3,
    "batch_size": 32,
    "conv_filters": [16],
    "dense_units": 32,
    "accuracy_floor": 0.5,
}
"""A training config small enough for tests, still far above chance on real digits."""


def mini_catalog_document(mini_mirror: dict, mirrors: list[str]) -> dict:
    return {
        "datasets": {
            "mini_mnist": {
                "title": "MNIST t10k cut into a small train/test mirror",
                "mirrors": mirrors,
                "files": json.loads(json.dumps(mini_mirror["files"])),
                "class_names": [str(d) for d in range(10)],
                "training": dict(TINY_TRAINING),
            }
        }
    }


def materialized(instance, defs) -> Counter:
    counts = Counter()
    for key in defs.resolve_asset_graph().materializable_asset_keys:
        for record in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=10_000
        ).records:
            counts[(key.path[-1], record.partition_key)] += 1
    return counts


class Project:
    """A mirror directory served over loopback HTTP, a catalog, storage and one real instance.

    The mirror is served under ``mount`` (default: a prefix of its own), and the catalog names that URL.
    """

    def __init__(self, mini_mirror, http_server, tmp_path, instance, mount: str | None = None):
        self.mirror = tmp_path / "mirror"
        shutil.copytree(mini_mirror["directory"], self.mirror)  # copy2: the files keep their mtime
        self.url = http_server.mount(mount or f"refresh-{tmp_path.name}", self.mirror)
        self.document = mini_catalog_document(mini_mirror, [self.url])
        self.storage = tmp_path / "artifacts"
        self.instance = instance
        self.arrays = mini_mirror["arrays"]
        self.directory = tmp_path

    @property
    def dataset(self):
        return self.document["datasets"]["mini_mnist"]

    def defs(self, assets_module=None) -> dg.Definitions:
        datasets = parse_catalog(self.document)
        if assets_module is None:
            return build_definitions(datasets, str(self.storage))
        return build_definitions(datasets, str(self.storage), assets_module.dataset_assets)

    def refresh(self, defs=None, dry_run=False, verify=False, select=None):
        defs = defs or self.defs()
        before = materialized(self.instance, defs)
        summary = refresh(
            defs,
            self.instance,
            ["mini_mnist"],
            dry_run=dry_run,
            verify=verify,
            log=lambda m: None,
            select=select,
        )
        delta = materialized(self.instance, defs) - before
        return summary, delta

    def observe(self) -> None:
        """Record every source's observation, as a refresh does first (a dry run records none)."""
        Refresher(self.defs(), self.instance, ["mini_mnist"]).observe(log=lambda line: None)

    def run_daily_schedule(self) -> str:
        """One evaluation of the daily_refresh schedule, as the daemon ticks it: it observes the sources
        and launches no run. Its skip message."""
        schedule = self.defs().resolve_schedule_def("daily_refresh")
        with dg.build_schedule_context(instance=self.instance) as context:
            result = schedule.evaluate_tick(context)
        assert not result.run_requests, result.run_requests
        return result.skip_message or ""

    def cli(self, *args: str, terminal: bool = False) -> subprocess.CompletedProcess:
        """``mnist-assets ARGS`` as a user runs it: a real process on this catalog and storage, with a
        persistent instance of its own in DAGSTER_HOME (not ``self.instance``). ``terminal``: stderr is
        a pseudo-terminal, as in an interactive shell (its bytes come back as ``stderr``)."""
        command, env = self.cli_command(*args)
        if not terminal:
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        return _run_on_a_terminal(command, {**env, "TERM": "xterm-256color", "COLUMNS": "120"})

    def cli_command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of ``mnist-assets ARGS`` (see :meth:`cli`), for a process
        the test starts itself (e.g. two at once, or one it kills)."""
        catalog, home = self.directory / "cli_catalog.json", self.directory / "cli_home"
        catalog.write_text(json.dumps(self.document))
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "MNIST_ASSETS_CATALOG": str(catalog),
            "MNIST_ASSETS_STORAGE": str(self.storage),
        }
        return [sys.executable, "-m", "mnist_assets.cli", *args], env


def _run_on_a_terminal(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``command`` with stderr on a pseudo-terminal (stdout still a pipe, as in ``cmd > out.json``)."""
    controller, terminal = pty.openpty()
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=terminal, env=env)
        os.close(terminal)
        seen, deadline = bytearray(), time.monotonic() + 300
        while True:
            if select.select([controller], [], [], 1.0)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
            elif time.monotonic() > deadline:
                process.kill()
                break
        os.close(controller)
        process.wait(timeout=30)
        stdout.seek(0)
        return subprocess.CompletedProcess(
            command, process.returncode, stdout.read().decode(), seen.decode(errors="replace")
        )


BUILT_MOUNT = "built-project"
"""The URL prefix of every built project's mirror on a worker's loopback server.

A changed file is evidence of other bytes only where the last verified download came from (the ``urls``
source compares a HEAD with the headers recorded for that URL), so a copy of a built project sees its
mirror's changes only when served at the URL it was built from. Tests on one worker run one at a time,
so each ``project`` remounts this prefix to its own mirror copy."""


class BuiltProject:
    """A project refreshed once and closed, in ``directory`` (``mirror``, ``artifacts``, ``dagster_home``),
    for tests to copy: one refresh from nothing per test process instead of one per test.

    A copy's artifacts live at another path than the build's, which is fine: staleness is code and input
    data versions plus the files under the current storage root; paths in metadata only inform.
    """

    def __init__(self, mini_mirror, http_server, directory: Path):
        self.mini_mirror, self.http_server, self.directory = mini_mirror, http_server, directory

    @contextlib.contextmanager
    def open(self, directory: Path) -> Iterator[Project]:
        (directory / "dagster_home").mkdir(exist_ok=True)
        shutil.rmtree(directory / "mirror", ignore_errors=True)  # Project copies the mirror afresh
        with dg.instance_for_test(temp_dir=str(directory / "dagster_home")) as instance:
            yield Project(self.mini_mirror, self.http_server, directory, instance, mount=BUILT_MOUNT)

    def refresh(self) -> Counter:
        """Refresh the build (from nothing, the first time); what it materialized."""
        with self.open(self.directory) as built:
            summary, delta = built.refresh()
        assert not summary.failed, [(s.asset, s.partition, s.error) for s in summary.failed]
        return delta  # the instance is closed: its SQLite files are whole, safe to copy

    @contextlib.contextmanager
    def copy(self, directory: Path) -> Iterator[Project]:
        for name in ("dagster_home", "artifacts"):
            shutil.copytree(self.directory / name, directory / name)
        with self.open(directory) as project:
            yield project
