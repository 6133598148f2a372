"""Real servers for the deployment tests and the deployment benchmark: PostgreSQL 15, redis-server,
Celery workers and moto's standalone S3 server, each started on a free loopback port in a temporary
directory, in a process group of its own, and stopped with the whole group (asserted gone).

Every process of the deployment gets ``Deployment.env``: one DAGSTER_HOME holding ``deploy/dagster.yaml``,
the PostgreSQL and broker settings, the catalog, and the artifact storage all share: a prefix in a bucket
of the S3 server (moto's), whose endpoint and credentials are in the environment. A plain module (no
fixtures): ``conftest.py`` beside it makes the fixtures, ``benchmarks/deploy_bench.py`` starts the same
servers itself.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from upath import UPath

from mnist_assets_tests.support import REPO, mini_catalog_document

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = Path("/usr/bin/redis-server")
VENV_BIN = Path(sys.executable).parent
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(ready, what: str, log: Path | None = None, seconds: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not come up within {seconds} s\n{tail}")
        time.sleep(0.2)


class Group:
    """A server process started in a process group (session) of its own; ``stop`` ends the whole group."""

    def __init__(self, name: str, command: list[str], log: Path, **popen):
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
            )

    def members(self) -> set[int]:
        """Every live process of the group (its pid is the group id)."""
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process ended while we looked
            if int(fields[2]) == self.process.pid and fields[0] != "Z":
                found.add(int(stat.parent.name))
        return found

    def stop(self, sig: int = signal.SIGTERM, seconds: float = 30) -> None:
        """``sig`` to the group, then SIGKILL whatever is left after ``seconds``; fails if any remains."""
        for signal_to_send, wait in ((sig, seconds), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, signal_to_send)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self.members() and time.monotonic() < deadline:
                self.process.poll()
                time.sleep(0.1)
            if not self.members():
                break
        self.process.poll()
        assert not self.members(), f"{self.name}: processes {sorted(self.members())} outlived the stop"


class Postgres:
    """A throwaway PostgreSQL 15 cluster owned by the ``postgres`` user (initdb and postgres refuse root),
    listening on 127.0.0.1 only, with one password-protected role and database for the instance."""

    user, database = "mnist_assets", "mnist_assets"

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.password = secrets.token_hex(12)
        shutil.chown(directory, "postgres", "postgres")
        data, password_file = directory / "data", directory / "superuser_password"
        password_file.write_text(secrets.token_hex(12))
        shutil.chown(password_file, "postgres", "postgres")
        initdb = subprocess.run(
            [PG_BIN / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--auth-local=trust"]
            + ["--auth-host=scram-sha-256", f"--pwfile={password_file}"],
            user="postgres",
            capture_output=True,
            text=True,
        )
        assert initdb.returncode == 0, f"initdb in {directory} failed:\n{initdb.stdout}{initdb.stderr}"
        self.server = Group(
            "postgres",
            [PG_BIN / "postgres", "-D", data, "-p", str(self.port), "-k", directory, "-h", "127.0.0.1"],
            directory / "postgres.log",
            user="postgres",
        )
        wait_for(self.accepts_connections, "PostgreSQL", directory / "postgres.log")
        self.superuser(
            f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'",
            f"CREATE DATABASE {self.database} OWNER {self.user}",
        )

    def accepts_connections(self) -> bool:
        probe = [PG_BIN / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, check=False).returncode == 0

    def superuser(self, *statements: str) -> None:
        """Run SQL as the superuser over the unix socket in the temporary directory."""
        command = [PG_BIN / "psql", "-h", self.directory, "-p", str(self.port), "-U", "postgres"]
        command += ["-v", "ON_ERROR_STOP=1", "-q", *(arg for s in statements for arg in ("-c", s))]
        subprocess.run(command, user="postgres", check=True, capture_output=True)

    @property
    def env(self) -> dict[str, str]:
        return {
            "MNIST_ASSETS_PG_USER": self.user,
            "MNIST_ASSETS_PG_PASSWORD": self.password,
            "MNIST_ASSETS_PG_HOST": "127.0.0.1",
            "MNIST_ASSETS_PG_PORT": str(self.port),
            "MNIST_ASSETS_PG_DB": self.database,
        }

    def stop(self) -> None:
        self.server.stop(signal.SIGINT)  # postgres's "fast" shutdown: end sessions, checkpoint, exit
        shutil.rmtree(self.directory)


class Redis:
    """redis-server on 127.0.0.1 with no persistence: the Celery broker and result backend."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.server = Group(
            "redis-server",
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", directory]
            + ["--save", "", "--appendonly", "no"],
            directory / "redis.log",
        )
        wait_for(self.answers, "redis-server", directory / "redis.log")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.server.stop()


class Deployment:
    """PostgreSQL, Redis, a DAGSTER_HOME with ``deploy/dagster.yaml``, shared artifact storage, a catalog
    naming the mini mirror, and Celery workers started with ``deploy/celery.yaml``."""

    def __init__(self, directory: Path, mini_mirror: dict, mirror_url: str, storage: str | None = None):
        """``storage``: the artifacts' root URL (default: a directory in ``directory``)."""
        self.directory = directory
        self.home = directory / "dagster_home"
        self.storage = UPath(storage or directory / "artifacts")
        self.home.mkdir()
        shutil.copy(REPO / "deploy" / "dagster.yaml", self.home / "dagster.yaml")
        self.catalog = directory / "catalog.json"
        self.document = mini_catalog_document(mini_mirror, [mirror_url])
        self.write_catalog()
        self.servers: list[Postgres | Redis | Group] = []  # what stop() ends, last started first
        self.workers: dict[str, Group] = {}

    def start(self, workers: tuple[str, ...] = ("w1", "w2")) -> None:
        """PostgreSQL and Redis, then ``workers``; this process's environment becomes ``self.env`` (the
        instance's settings are environment variables). ``stop`` undoes what got started."""
        # not under pytest's directory, which only root may enter
        self.postgres = Postgres(Path(tempfile.mkdtemp(prefix="mnist-assets-postgres-")))
        self.servers.append(self.postgres)
        self.redis = Redis(self.directory)
        self.servers.append(self.redis)
        os.environ.update(self.env)
        for name in workers:
            self.start_worker(name)

    def write_catalog(self) -> None:
        self.catalog.write_text(json.dumps(self.document))

    @property
    def training(self) -> dict:
        return self.document["datasets"]["mini_mnist"]["training"]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.postgres.env,
            "DAGSTER_HOME": str(self.home),
            "MNIST_ASSETS_EXECUTOR": "celery",
            "MNIST_ASSETS_CELERY_BROKER": self.redis.url,
            "MNIST_ASSETS_CATALOG": str(self.catalog),
            "MNIST_ASSETS_STORAGE": str(self.storage),
            "PYTHONPATH": str(REPO),  # this checkout's mnist_assets, in every process
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
        }

    def start_worker(self, name: str) -> Group:
        """A Celery worker as docs/deploy.md starts one, with one pool process that runs one step each."""
        log = self.directory / f"worker-{name}.log"
        command = [VENV_BIN / "dagster-celery", "worker", "start", "-A", "dagster_celery.app"]
        command += ["-y", REPO / "deploy" / "celery.yaml", "-n", name, "--", *WORKER_ARGS]
        worker = Group(f"worker {name}", command, log, env=self.env, cwd=self.directory)
        self.servers.append(worker)
        wait_for(lambda: " ready." in log.read_text(errors="replace"), f"Celery worker {name}", log)
        self.workers[name] = worker
        return worker

    def refresh(self, *args: str) -> subprocess.Popen:
        """``mnist-assets refresh mini_mnist ARGS`` as a user runs it on the deployment (not waited for)."""
        command = [sys.executable, "-m", "mnist_assets.cli", "refresh", "mini_mnist", *args]
        return subprocess.Popen(
            command, env=self.env, cwd=self.directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def instance(self) -> dg.DagsterInstance:
        """The deployment's instance, as every process of it sees it (``self.env`` must be in os.environ)."""
        return dg.DagsterInstance.from_config(str(self.home))

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


WORKER_ARGS = ["--concurrency=1", "--max-tasks-per-child=1"]
"""Mirrors docs/deploy.md: a fresh pool process per step imports the code and catalog as they are now."""


class MotoS3:
    """moto's standalone S3 server (a real HTTP server in its own process) on 127.0.0.1, with one bucket
    for the artifacts; ``env`` is what every process needs to reach it through s3fs."""

    bucket = "mnist-assets"

    def __init__(self, directory: Path):
        self.port = free_port()
        self.server = Group(
            "moto_server",
            [VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            directory / "moto.log",
        )
        wait_for(self.answers, "moto_server", directory / "moto.log")

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "testing",  # moto accepts any credentials
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def stop(self) -> None:
        self.server.stop()
