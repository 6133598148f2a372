"""The deployment tests' fixtures: the whole deployment for a module's tests, one S3 server for the
session; the servers themselves are in :mod:`mnist_assets_tests.deploy.servers`. Only ``make
test-deploy`` selects these tests (marker ``deploy``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mnist_assets_tests.deploy.servers import PG_BIN, REDIS_SERVER, Deployment, MotoS3


@pytest.fixture(scope="module")
def deployment(mini_mirror, http_server, s3, tmp_path_factory) -> Iterator[Deployment]:
    """The whole deployment with two Celery workers and artifacts on S3, for a module's tests in order."""
    for binary in (PG_BIN / "initdb", REDIS_SERVER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: apt-get install -y postgresql-15 redis-server")
    url = http_server.mount("deploy", mini_mirror["directory"])
    directory = tmp_path_factory.mktemp("deployment")
    deployment = Deployment(directory, mini_mirror, url, s3.url(directory.name))
    saved = dict(os.environ)
    try:
        deployment.start()
        yield deployment
    finally:
        os.environ.clear()
        os.environ.update(saved)
        deployment.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[MotoS3]:
    """One S3 server for the session (s3fs caches its clients per process); this process's environment
    names it while it runs, and child processes inherit that. Each test stores under its own prefix."""
    import s3fs

    server = MotoS3(tmp_path_factory.mktemp("moto"))
    saved = dict(os.environ)
    try:
        os.environ.update(server.env)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(server.bucket)
        yield server
    finally:
        os.environ.clear()
        os.environ.update(saved)
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
