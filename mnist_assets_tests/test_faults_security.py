"""Security: what may be fetched, loaded, named and shown."""

from __future__ import annotations

import ast
import re
from collections import Counter

import dagster as dg
import pytest

from mnist_assets import download
from mnist_assets.catalog import CatalogError, load_catalog
from mnist_assets_tests.conftest import REPO
from mnist_assets_tests.faults import scenario

PACKAGE = REPO / "mnist_assets"


@scenario(
    "Security",
    "A mirror with a scheme other than http, https or file (ftp, gopher, javascript)",
    "Refused before any request, naming the dataset and the scheme",
    "Nothing fetched",
)
@pytest.mark.parametrize("mirror", ["ftp://127.0.0.1/mnist/", "gopher://127.0.0.1/", "javascript:alert(1)//"])
def test_only_http_https_and_file_urls_are_fetched(mirror):
    dataset = load_catalog()["mnist"]
    with pytest.raises(CatalogError, match=r"^mnist: .*scheme"):
        dataset.resolve_mirrors([mirror])
    with pytest.raises(download.DownloadError, match="is not allowed"):
        download.fetch(
            dataset, dataset.files["test-labels"], [mirror + "x.gz"], download.FetchPolicy(attempts=1)
        )


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == name
    ]


def _keyword(call: ast.Call, name: str):
    return next(
        (k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None
    )


@scenario(
    "Security",
    "Code that could unpickle (pickle, joblib, np.load without allow_pickle=False, unsafe Keras load)",
    "This test fails on any such load path in the package",
    "No stored byte is ever unpickled",
)
def test_no_load_path_in_the_package_can_unpickle():
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(
                    n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}
                    for n in names
                ):
                    problems.append(f"{path.name}:{node.lineno} imports a pickle module")
        for call in _calls(tree, "load"):
            is_numpy = getattr(getattr(call.func, "value", None), "id", "") == "np"
            if is_numpy and _keyword(call, "allow_pickle") is not False:
                problems.append(f"{path.name}:{call.lineno} np.load without allow_pickle=False")
        for call in _calls(tree, "load_model"):
            if _keyword(call, "safe_mode") is not True:
                problems.append(f"{path.name}:{call.lineno} load_model without safe_mode=True")
        for call in _calls(tree, "read_pickle"):
            problems.append(f"{path.name}:{call.lineno} read_pickle")
    assert problems == []
    assert _calls(ast.parse((PACKAGE / "io_managers.py").read_text()), "load"), "the scan must see np.load"


@scenario(
    "Security",
    "Dataset ids, asset keys or partition keys that try to leave the storage root (`..`, `/`, dotfiles)",
    "Refused with `refusing unsafe storage name` or a catalog error naming the id",
    "Nothing written outside the storage root",
)
@pytest.mark.parametrize("name", ["..", "../../etc", "a/b", ".hidden", "", "x" * 200])
def test_names_cannot_leave_the_storage_root(tmp_path, name):
    from mnist_assets.catalog import parse_catalog
    from mnist_assets.io_managers import NumpyIOManager, StorageError

    store = NumpyIOManager(root=str(tmp_path / "root"))
    with pytest.raises(StorageError, match="unsafe"):
        store.asset_dir(dg.AssetKey(["mini", name]))
    with pytest.raises(StorageError, match="unsafe"):
        store.location(dg.AssetKey(["mini", "idx"]), name)
    with pytest.raises(CatalogError, match="dataset id"):
        parse_catalog({"datasets": {name: {}}})
    assert not (tmp_path / "etc").exists() and not (tmp_path / "root").exists()


WEBSERVER = re.compile(r"\b(dagster dev|dagster-webserver|dagster-daemon run)\b[^\n`]*")


@scenario(
    "Security",
    "The UI reachable from other machines",
    "Every webserver command in the README and Makefile binds 127.0.0.1",
    "The UI stays local unless you choose otherwise",
)
def test_documented_webserver_commands_bind_loopback_only():
    commands = []
    for doc in ("README.md", "Makefile"):
        commands += [(doc, m.group(0)) for m in WEBSERVER.finditer((REPO / doc).read_text())]
    servers = [(doc, c) for doc, c in commands if not c.startswith("dagster-daemon")]
    assert servers, "the README or Makefile must show how to start the UI"
    assert [(doc, c) for doc, c in servers if not re.search(r"(-h|--host)[ =]127\.0\.0\.1\b", c)] == []


@scenario(
    "Security",
    "A mirror URL carrying user:password (or a token in a URL's query)",
    "The URL appears as `http://***@host/...` (`?token=***`) in logs, errors, metadata and the summary",
    "No secret in the event log or the artifacts",
)
def test_credentials_in_mirror_urls_never_reach_the_event_log_or_metadata(project):
    from mnist_assets.catalog import redact_url

    assert (
        redact_url("https://h/x.gz?X-Amz-Signature=abc&token=t")
        == "https://h/x.gz?X-Amz-Signature=***&token=***"
    )
    secret = "s3cret-pass"
    project.dataset["mirrors"] = [project.url.replace("http://", f"http://reader:{secret}@")]
    summary, delta = project.refresh()

    assert delta == Counter({("raw_gzip", key): 1 for key in project.dataset["files"]})  # same payloads
    instance = project.instance
    records = [
        record
        for key in project.defs().resolve_asset_graph().get_all_asset_keys()
        for fetch in (instance.fetch_materializations, instance.fetch_observations)
        for record in fetch(key, limit=10_000).records
    ]
    logs = [e for run in project.instance.get_runs() for e in project.instance.all_logs(run.run_id)]
    shown = "\n".join([*(repr(r.event_log_entry) for r in records), *(repr(e) for e in logs), repr(summary)])
    assert "***@" in shown
    assert secret not in shown
    stored = [
        p.read_bytes() for p in project.storage.rglob("*") if p.is_file() and p.suffix in (".json", ".md")
    ]
    assert not any(secret.encode() in data for data in stored)
