"""A graph on the deployment (PostgreSQL + two Celery workers) beside the embedded default.

By default the tests' mini dataset (real MNIST t10k cut into 2000/500 images, tiny training config);
``--dataset fashion_mnist --epochs 1`` takes the packaged catalog's entry instead, read from its local
mirror (Debian's /usr/share/datasets/fashion-mnist/), so the full-size graph is timed too (issue 13).
The dataset is built from nothing by ``mnist-assets refresh`` twice per repeat: in process on SQLite
and local files, then with ``MNIST_ASSETS_EXECUTOR=celery`` on the servers of
``mnist_assets_tests/deploy`` (started once, the workers kept warm as a deployment keeps them), its
artifacts on local disk or, with ``--s3``, on moto's S3 server. Reports wall seconds of each CLI run,
their ratio (issue 13's goal for the small graph: <= 3x) and each step's seconds from the refresh
summaries, side by side.
Needs the deploy extra, postgresql-15 and redis-server; run as root from the repository root.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
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
from mnist_assets.catalog import DEFAULT_CATALOG
from mnist_assets_tests.deploy import servers as deploy
from mnist_assets_tests.deploy.servers import PG_BIN, Deployment, MotoS3
from mnist_assets_tests.support import real_mnist_file, write_mini_mirror

MINI = "mini_mnist"


def mini_mirror(directory: Path) -> dict:
    """The tests' mini mirror (``mini_mirror`` fixture) as a plain directory."""
    images, labels = (
        idx.parse(gzip.decompress(real_mnist_file(f"t10k-{kind}-idx{n}-ubyte.gz").read_bytes()))
        for kind, n in (("images", 3), ("labels", 1))
    )
    return write_mini_mirror(directory, images, labels)


def packaged_entry(dataset: str, epochs: int | None) -> dict:
    """The packaged catalog's entry for ``dataset``, its mirrors narrowed to the local directories (a
    benchmark must not time the network), trained for ``epochs`` when given."""
    entry = json.loads(DEFAULT_CATALOG.read_text())["datasets"][dataset]
    local = [mirror for mirror in entry["mirrors"] if Path(mirror).is_dir()]
    if not local:
        sys.exit(
            f"{dataset}: none of the packaged catalog's mirrors {entry['mirrors']} is a directory on this "
            "machine; install the dataset's files there (Debian: /usr/share/datasets/fashion-mnist/) or "
            "run the default mini dataset"
        )
    entry["mirrors"] = local
    if epochs is not None:
        entry["training"] = {**entry.get("training", {}), "epochs": epochs}
    return entry


def deployment_for(dataset: str, epochs: int | None, root: Path) -> Deployment:
    """The deployment (not started) with a catalog naming only ``dataset``."""
    (root / "deployment").mkdir()
    if dataset == MINI:
        (root / "mirror").mkdir()
        deployment = Deployment(root / "deployment", mini_mirror(root / "mirror"), str(root / "mirror"))
        if epochs is not None:
            deployment.training["epochs"] = epochs
    else:
        # Deployment writes a mini catalog; an empty one here, replaced by the packaged entry
        deployment = Deployment(root / "deployment", {"files": {}}, "")
        deployment.document = {"datasets": {dataset: packaged_entry(dataset, epochs)}}
    deployment.write_catalog()
    return deployment


def start_s3(root: Path) -> MotoS3:
    """moto's S3 server with the artifacts' bucket; this process's environment (hence the deployment's
    and every child's) names it."""
    import s3fs

    server = MotoS3(root)
    os.environ.update(server.env)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(server.bucket)
    return server


def timed_refresh(dataset: str, env: dict[str, str], cwd: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "mnist_assets.cli", "refresh", dataset],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"refresh {dataset} failed ({out.returncode}):\n{out.stderr[-4000:]}")
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


def step_table(runs: list[dict]) -> list[str]:
    """Each step's seconds (summed over its partitions), in process beside deployed, for every repeat."""
    sides = ("in_process_steps_s", "deployed_steps_s")
    names = dict.fromkeys(name for run in runs for side in sides for name in run[side])
    header = [f"{label} s (run {i + 1})" for i in range(len(runs)) for label in ("in process", "deployed")]
    rows = [[name, *(str(run[side].get(name, "-")) for run in runs for side in sides)] for name in names]
    return [f"| {' | '.join(row)} |" for row in (["step", *header], ["---"] * (len(header) + 1), *rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--dataset",
        default=MINI,
        help=f"{MINI} (default: the tests' mini dataset) or a packaged catalog entry with a local mirror, "
        "e.g. fashion_mnist",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: the catalog entry's)")
    parser.add_argument("--s3", action="store_true", help="the deployment's artifacts on moto's S3 server")
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
    servers: list[Deployment | MotoS3] = []  # what gets stopped, last started first
    runs: list[dict] = []
    try:
        deployment = deployment_for(args.dataset, args.epochs, root)
        s3 = start_s3(root) if args.s3 else None
        servers.extend([s3] if s3 else [])
        servers.append(deployment)
        deployment.start()
        for repeat in range(args.repeats):
            embedded = root / f"embedded-{repeat}"
            (embedded / "home").mkdir(parents=True)
            (embedded / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            env = {**deployment.env, "DAGSTER_HOME": str(embedded / "home")}
            env.update(MNIST_ASSETS_EXECUTOR="in_process", MNIST_ASSETS_STORAGE=str(embedded / "artifacts"))
            in_process, in_process_summary = timed_refresh(args.dataset, env, root)

            storage = s3.url(f"deployed-{repeat}") if s3 else str(root / f"deployed-{repeat}")
            deployed_env = {**deployment.env, "MNIST_ASSETS_STORAGE": storage}
            with ConnectionPeak(deployment) as connections:
                deployed, deployed_summary = timed_refresh(args.dataset, deployed_env, root)
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
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(root)
    ratio = round(statistics.median(run["ratio"] for run in runs), 2)
    storage_name = "S3 (moto)" if args.s3 else "local disk"
    lines = [
        f"{args.dataset}, epochs {args.epochs or 'as catalogued'}; deployed artifacts on {storage_name}",
        "",
        "| repeat | in process (SQLite) s | PostgreSQL + 2 Celery workers s | ratio | peak PG sessions |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {run['in_process_s']} | {run['deployed_s']} | {run['ratio']} "
            f"| {run['peak_postgres_sessions']} |"
            for i, run in enumerate(runs)
        ),
        "",
        f"median ratio {ratio}" + (" (goal <= 3)" if args.dataset == MINI else ""),
        "",
        *step_table(runs),
    ]
    name = "deploy_bench" + ("" if args.dataset == MINI else f"_{args.dataset}")
    name += "_long_lived_pool" if args.long_lived_pool else ""
    name += "_s3" if args.s3 else ""
    settings = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "s3": args.s3,
        "worker_args": deploy.WORKER_ARGS,
    }
    report.write(args.out, name, {"runs": runs, "median_ratio": ratio, **settings}, lines)


if __name__ == "__main__":
    main()
