"""Memory does not grow with the dataset: raw_gzip → idx → shards at 10x Fashion-MNIST's size.

A valid MNIST-format dataset is generated at 1x (60,000 train images) and 10x (600,000) into local
directory mirrors; a child process runs the real assets (raw_gzip, idx, shards, every partition) on
each and reports its peak RSS (``VmHWM``: ``ru_maxrss`` would include this pytest process's own
peak, which Linux carries into its children); so does one that runs raw_gzip alone, downloading from
the mirror served over loopback HTTP. The 10x peak must stay within 2x the 1x peak: the streaming
path (the download into a staged file, chunked inflate into the .npy, memory-mapped inputs, one
Parquet shard at a time) holds a few shards' worth of data, where holding whole arrays grew about 5x.
100x lives in ``benchmarks/scale_bench.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_assets_tests.support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scale_bench  # noqa: E402  (the benchmark's generator and stage runner)

STAGES = ("raw_gzip", "idx", "shards")


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> dict[int, tuple]:
    """Catalog files of the 1x and 10x datasets (generated in chunks, gzip level 1)."""
    made = {}
    for scale in (1, 10):
        work = tmp_path_factory.mktemp(f"scale{scale}x")
        catalog = work / "catalog.json"
        catalog.write_text(json.dumps(scale_bench.generate(work / "mirror", scale)))
        made[scale] = (catalog, work / "artifacts")
    return made


def peak_rss_mb(catalog, storage, stages=STAGES) -> tuple[float, dict]:
    """Peak RSS of one child process that runs ``stages`` (in order) on every partition."""
    child = subprocess.run(
        [sys.executable, scale_bench.__file__, "--child", *stages, "--catalog", str(catalog)]
        + ["--storage", str(storage)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return result["peak_rss_mb"], result


def test_peak_memory_at_10x_is_within_2x_of_1x(mirrors):
    small, small_run = peak_rss_mb(*mirrors[1])
    large, large_run = peak_rss_mb(*mirrors[10])
    rows = {stage: measured["rows"] for stage, measured in small_run["stages"].items()}
    assert rows == {"raw_gzip": 0, "idx": 2 * 70_000, "shards": 70_000}  # idx: images and labels
    assert {stage: measured["rows"] for stage, measured in large_run["stages"].items()} == {
        stage: 10 * count for stage, count in rows.items()
    }
    assert large <= 2 * small, (
        f"peak RSS {large:.0f} MB at 10x against {small:.0f} MB at 1x: memory grows with the data "
        f"({json.dumps(small_run)} / {json.dumps(large_run)})"
    )


def served_over_http(catalog: Path, server) -> Path:
    """A copy of ``catalog`` whose mirror is its directory served by the loopback HTTP server."""
    document = json.loads(catalog.read_text())
    entry = document["datasets"][scale_bench.DATASET]
    entry["mirrors"] = [server.mount(f"memory-{catalog.parent.name}", Path(entry["mirrors"][0]))]
    served = catalog.with_name("catalog_http.json")
    served.write_text(json.dumps(document))
    return served


def test_download_peak_memory_at_10x_is_within_2x_of_1x(mirrors, http_server):
    """raw_gzip alone, over HTTP. Holding the body grew the peak by about two copies of the largest
    file (1.99x at 10x, 6.6x at 100x); streamed, the peak at 10x stays within a quarter of one copy of
    the 1x peak."""
    peaks, runs, largest = {}, {}, 0
    for scale, (catalog, storage) in mirrors.items():
        served = served_over_http(catalog, http_server)
        peaks[scale], runs[scale] = peak_rss_mb(served, storage.with_name("http_artifacts"), ("raw_gzip",))
        mirror = Path(json.loads(catalog.read_text())["datasets"][scale_bench.DATASET]["mirrors"][0])
        sizes = {f"{key}.gz": (mirror / name).stat().st_size for key, name in scale_bench.FILENAMES.items()}
        stored = storage.with_name("http_artifacts") / scale_bench.DATASET / "raw_gzip"
        assert {p.name: p.stat().st_size for p in stored.iterdir()} == sizes
        largest = max(sizes.values())
    grown = f"raw_gzip peak RSS {peaks[10]:.0f} MB at 10x against {peaks[1]:.0f} MB at 1x"
    assert peaks[10] <= 2 * peaks[1], f"{grown} ({json.dumps(runs)})"
    assert peaks[10] - peaks[1] <= largest / 4 / 2**20, (
        f"{grown}: the download holds much of its {largest / 2**20:.0f} MiB file ({json.dumps(runs)})"
    )
