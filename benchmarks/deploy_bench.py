"""The small graph on the deployment (PostgreSQL + two Celery workers) beside the embedded default.

The tests' mini dataset (real MNIST t10k cut into 2000/500 images, tiny training config) is built from
nothing by ``mnist-assets refresh`` twice per repeat: in process on SQLite, then with
``MNIST_ASSETS_EXECUTOR=celery`` on the servers of ``mnist_assets_tests/deploy`` (started once, the
workers kept warm as a deployment keeps them). Reports wall seconds of each CLI run, their ratio
(issue 13's goal: <= 3x) and each step's seconds from the refresh summaries.
Needs the deploy extra, postgresql-15 and redis-server; run as root from the repository root.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import report

from mnist_assets import idx
from mnist_assets.catalog import FILE_KEYS
from mnist_assets_tests.conftest import MINI_FILENAMES, MINI_TEST, MINI_TRAIN, real_mnist_file, write_idx_gz
from mnist_assets_tests.deploy import conftest as deploy
from mnist_assets_tests.deploy.conftest import PG_BIN, Deployment


def mini_mirror(directory: Path) -> dict:
    """The tests' mini mirror (``mini_mirror`` fixture) as a plain directory."""
    images, labels = (
        idx.parse(gzip.decompress(real_mnist_file(f"t10k-{kind}-idx{n}-ubyte.gz").read_bytes()))
        for kind, n in (("images", 3), ("labels", 1))
    )
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
    return {"directory": directory, "files": files}


def timed_refresh(env: dict[str, str], cwd: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "mnist_assets.cli", "refresh", "mini_mnist"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"refresh failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return seconds, json.loads(out.stdout)


class ConnectionPeak:
    """The most PostgreSQL sessions on the instance's database seen while a block runs (polled)."""

    def __init__(self, deployment: Deployment):
        self.postgres, self.peak, self.stop = deployment.postgres, 0, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def count(self) -> int:
        query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.postgres.database}'"
        command = [PG_BIN / "psql", "-h", self.postgres.directory, "-p", str(self.postgres.port)]
        command += ["-U", "postgres", "-tA", "-c", query]
        out = subprocess.run(command, user="postgres", capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    def poll(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, self.count())

    def __enter__(self) -> ConnectionPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def step_seconds(summary: dict) -> dict[str, float]:
    totals: dict[str, float] = {}
    for step in summary["ran"]:
        name = step["asset"].split("/")[-1]
        totals[name] = round(totals.get(name, 0.0) + (step["seconds"] or 0.0), 2)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--long-lived-pool",
        action="store_true",
        help="workers keep their pool processes across steps (no --max-tasks-per-child=1): faster, but a "
        "catalog edit then needs a worker restart (docs/deploy.md)",
    )
    args = parser.parse_args()
    if args.long_lived_pool:
        deploy.WORKER_ARGS.remove("--max-tasks-per-child=1")
    root = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    (root / "mirror").mkdir()
    mirror = mini_mirror(root / "mirror")
    (root / "deployment").mkdir()
    deployment = Deployment(root / "deployment", mirror, str(root / "mirror"))
    runs: list[dict] = []
    try:
        deployment.start()
        for repeat in range(args.repeats):
            embedded = root / f"embedded-{repeat}"
            (embedded / "home").mkdir(parents=True)
            (embedded / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            env = {**deployment.env, "DAGSTER_HOME": str(embedded / "home")}
            env.update(MNIST_ASSETS_EXECUTOR="in_process", MNIST_ASSETS_STORAGE=str(embedded / "artifacts"))
            in_process, in_process_summary = timed_refresh(env, root)

            deployed_env = {**deployment.env, "MNIST_ASSETS_STORAGE": str(root / f"deployed-{repeat}")}
            with ConnectionPeak(deployment) as connections:
                deployed, deployed_summary = timed_refresh(deployed_env, root)
            runs.append(
                {
                    "in_process_s": round(in_process, 2),
                    "deployed_s": round(deployed, 2),
                    "ratio": round(deployed / in_process, 2),
                    "peak_postgres_sessions": connections.peak,
                    "in_process_steps_s": step_seconds(in_process_summary),
                    "deployed_steps_s": step_seconds(deployed_summary),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    finally:
        deployment.stop()
        shutil.rmtree(root)
    ratio = round(statistics.median(run["ratio"] for run in runs), 2)
    lines = [
        "| repeat | in process (SQLite) s | PostgreSQL + 2 Celery workers s | ratio | peak PG sessions |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {run['in_process_s']} | {run['deployed_s']} | {run['ratio']} "
            f"| {run['peak_postgres_sessions']} |"
            for i, run in enumerate(runs)
        ),
        "",
        f"median ratio {ratio} (goal <= 3)",
    ]
    name = "deploy_bench_long_lived_pool" if args.long_lived_pool else "deploy_bench"
    report.write(
        args.out, name, {"runs": runs, "median_ratio": ratio, "worker_args": deploy.WORKER_ARGS}, lines
    )


if __name__ == "__main__":
    main()
