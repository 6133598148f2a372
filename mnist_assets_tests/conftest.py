"""The tests' fixtures, built from the real parts in :mod:`mnist_assets_tests.support`."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import dagster as dg
import pytest

from mnist_assets import idx
from mnist_assets.catalog import parse_catalog
from mnist_assets_tests.support import (
    BUILT_MOUNT,
    BuiltProject,
    LoopbackServer,
    Project,
    mini_catalog_document,
    real_mnist_file,
    write_mini_mirror,
)


@pytest.fixture(scope="session")
def http_server():
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def t10k_arrays():
    images = idx.parse(gzip.decompress(real_mnist_file("t10k-images-idx3-ubyte.gz").read_bytes()))
    labels = idx.parse(gzip.decompress(real_mnist_file("t10k-labels-idx1-ubyte.gz").read_bytes()))
    return images, labels


@pytest.fixture(scope="session")
def mini_mirror(tmp_path_factory, t10k_arrays) -> dict:
    """A small real mirror: directory, catalog file entries and arrays of each file."""
    return write_mini_mirror(tmp_path_factory.mktemp("mini_mirror"), *t10k_arrays)


@pytest.fixture
def mini_catalog(mini_mirror, http_server, tmp_path):
    """The mini dataset served over loopback HTTP, as a parsed catalog and as a catalog file."""
    url = http_server.mount("mini", mini_mirror["directory"])
    document = mini_catalog_document(mini_mirror, [url])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document))
    return {"datasets": parse_catalog(document), "path": path, "url": url}


@pytest.fixture
def empty_project(mini_mirror, http_server, tmp_path):
    """A project whose assets were never materialized."""
    with dg.instance_for_test() as instance:
        yield Project(mini_mirror, http_server, tmp_path, instance)


@pytest.fixture(scope="session")
def built_project(mini_mirror, http_server, tmp_path_factory) -> BuiltProject:
    """The mini dataset refreshed from nothing, once per test process (each xdist worker builds one)."""
    built = BuiltProject(mini_mirror, http_server, tmp_path_factory.mktemp("built_project"))
    delta = built.refresh()
    assert sum(delta.values()) == 4 + 4 + 3 + 1 + 1 and set(delta.values()) == {1}, delta
    return built


def _forget_faults_and_requests(server: LoopbackServer, prefix: str) -> None:
    for table in (server.faults, server.head_faults, server.requests):
        for path in [p for p in table if p.startswith(f"/{prefix}/")]:
            del table[path]


def _follows_a_rebuild(cause: str) -> bool:
    """A cause that an upstream rebuild in the same refresh explains (not a change of the sources)."""
    return cause.startswith("has a new dependency data version (mini_mnist/") and "/urls[" not in cause


@pytest.fixture
def project(built_project, http_server, tmp_path):
    """A project refreshed once: every asset partition materialized.

    Each test gets its own copy of ``built_project`` (mirror, storage, instance home), so a test that
    changes the mirror, the catalog, the storage or the event log changes only its copy.
    """
    _forget_faults_and_requests(http_server, BUILT_MOUNT)  # what an earlier test left on the prefix
    with built_project.copy(tmp_path) as copy:
        summary, delta = copy.refresh()
        causes = {c for step in summary.ran + summary.failed for c in step.causes}
        # product code edited since the build (code versions hash the sources on disk): the copy has
        # just caught up, as a build from nothing would have, and the build catches up after the test
        caught_up = (
            "has a new code version" in causes
            and not summary.failed
            and all(c == "has a new code version" or _follows_a_rebuild(c) for c in causes)
        )
        if not caught_up:  # anything else to do means the copy is wrong: not a test result
            assert delta == Counter() and summary.ran == [] and not summary.failed, (
                "a copy of built_project is not fresh: "
                f"{[(s.asset, s.partition, s.causes, s.error) for s in summary.ran + summary.failed]}"
            )
            assert summary.fresh == 4 + 4 + 3 + 1 + 1, summary
        _forget_faults_and_requests(http_server, BUILT_MOUNT)  # the test counts its own requests
        yield copy
    _forget_faults_and_requests(http_server, BUILT_MOUNT)
    if caught_up:
        built_project.refresh()
