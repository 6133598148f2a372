"""Security: what may be fetched, loaded, named and shown."""

from __future__ import annotations

import ast
import re
import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from mnist_assets import download, idx
from mnist_assets.catalog import CatalogError, SettingError, load_catalog, parse_catalog
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import REPO, mini_catalog_document, write_idx_gz

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
    with pytest.raises(CatalogError, match=r"^dataset mnist: .*scheme"):
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
    for path in sorted(PACKAGE.rglob("*.py")):  # subpackages (storage/) too
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
    io_managers = PACKAGE / "storage" / "io_managers.py"
    assert _calls(ast.parse(io_managers.read_text()), "load"), "the scan must see np.load"


@scenario(
    "Security",
    "Dataset ids, asset keys or partition keys that try to leave the storage root (`..`, `/`, dotfiles)",
    "Refused with `refusing unsafe storage name` or a catalog error naming the id",
    "Nothing written outside the storage root",
)
@pytest.mark.parametrize("name", ["..", "../../etc", "a/b", ".hidden", "", "x" * 200])
def test_names_cannot_leave_the_storage_root(tmp_path, name):
    from mnist_assets.storage.faults import StorageError
    from mnist_assets.storage.io_managers import NumpyIOManager

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
    for stored_file in (project.storage / "mini_mnist/raw_gzip").glob("*.gz"):
        stored_file.unlink()  # fetched again, through the URL with the password (same payloads)
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


# --- file names are names: nothing outside the mirror is read, hashed or probed ---------------------

DECOY = "%2E%2E%2Foutside%2Ftrain-labels-idx1-ubyte.gz"
"""The exploit of issue 21: a percent-encoded ``../outside/`` in a catalog file name."""
ETC_PASSWD = "%2E%2E%2F" * 12 + "etc%2Fpasswd"


@pytest.fixture
def beside(tmp_path, mini_mirror):
    """A directory mirror of the mini dataset and, beside it, ``outside/`` holding a decoy labels file
    (the real labels reversed) whose pins are its own: the catalog entry the exploit would write."""
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    shutil.copytree(mini_mirror["directory"], mirror)
    outside.mkdir()
    labels = mini_mirror["arrays"]["train-labels"][::-1].copy()
    pins = {
        "payload_sha256": write_idx_gz(outside / "train-labels-idx1-ubyte.gz", labels),
        "payload_size": len(idx.encode(labels)),
    }
    document = mini_catalog_document(mini_mirror, [str(mirror)])
    dataset = parse_catalog(document)["mini_mnist"]
    return {"mirror": mirror, "outside": outside, "pins": pins, "document": document, "dataset": dataset}


def _unchecked(dataset, key: str, **fields):
    """A file entry made without the catalog's validation (``model_copy`` skips it): what the download
    must refuse by itself, whoever builds its arguments."""
    return dataset.file(key).model_copy(update=fields)


@scenario(
    "Security",
    "A catalog file name with a percent-encoded `../` (`%2E%2E%2Foutside%2F...`) on a directory mirror, "
    "with a decoy file beside the mirror (the exploit of issue 21)",
    "The catalog refuses the entry naming the dataset, the file key and what the name decodes to; "
    "a download given such a name refuses it before reading",
    "Nothing outside the mirror is read",
)
def test_a_percent_encoded_parent_in_a_file_name_cannot_fetch_a_decoy_beside_the_mirror(beside):
    files = beside["document"]["datasets"]["mini_mnist"]["files"]
    files["train-labels"] = {"filename": DECOY, **beside["pins"]}
    with pytest.raises(CatalogError) as refused:
        parse_catalog(beside["document"])
    assert str(refused.value).startswith("dataset mini_mnist, key files/train-labels/filename: ")
    assert "'../outside/train-labels-idx1-ubyte.gz'" in str(refused.value)

    dataset = beside["dataset"]
    hostile = _unchecked(dataset, "train-labels", filename=DECOY, **beside["pins"])
    urls = dataset.file_urls(dataset.resolve_mirrors())["train-labels"]
    assert urls == [beside["mirror"].as_uri() + "/train-labels-idx1-ubyte.gz"]
    with pytest.raises(download.DownloadError, match="not a plain file name"):
        download.fetch(dataset, hostile, [beside["mirror"].as_uri() + "/" + DECOY])


@scenario(
    "Security",
    "A file name that climbs to `/etc/passwd`, or to a path that does not exist, given to the local "
    "mirror's fingerprint (the `urls` observation)",
    "Both refused alike before any file is opened: no hash, no 'no such file' to tell them apart",
    "Nothing outside the mirror is hashed or probed",
)
@pytest.mark.parametrize("target", [ETC_PASSWD, ETC_PASSWD.replace("passwd", "no-such-file")])
def test_fingerprint_never_hashes_or_probes_a_path_outside_the_mirror(beside, target):
    dataset = beside["dataset"]
    hostile = _unchecked(dataset, "train-labels", filename=target)
    url = beside["mirror"].as_uri() + "/" + target
    with pytest.raises(download.DownloadError, match="not a plain file name") as refused:
        download.fingerprint(dataset, hostile, [url])
    assert "sha256" not in str(refused.value) and "no such file" not in str(refused.value)


HOSTILE_NAMES = {
    "encoded parent": "%2E%2E%2Fx.gz",
    "encoded twice": "%252E%252E%252Fx.gz",
    "encoded three times": "%25252E%25252E%25252Fx.gz",
    "mixed case encoding": "%2e%2E%2fx.gz",
    "encoded slash only": "..%2Fx.gz",
    "encoded dots only": "%2E%2E/x.gz",
    "encoded backslash": "..%5Cx.gz",
    "parent": "..",
    "dot": ".",
    "dotfile": ".x.gz",
    "slash": "a/x.gz",
    "absolute": "/etc/passwd",
    "backslash": "..\\x.gz",
    "NUL": "x.gz\x00.txt",
    "encoded NUL": "x.gz%00",
    "newline": "x\n.gz",
    "DEL": "x\x7f.gz",
    "C1 control": "x\x85.gz",
    "query": "x.gz?y",
    "fragment": "x.gz#y",
    "empty": "",
}


@scenario(
    "Security",
    "A catalog file name that is not a plain name after any decoding: percent-encoded once or nested "
    "(`%252E`), `..`, a leading `.`, `/`, `\\`, NUL or another control character, `?`, `#`, empty",
    "The catalog refuses it naming the dataset and file key (and what the name decodes to); the download "
    "and the fingerprint refuse it too, given it without the catalog, before reading a byte or sending "
    "a request",
    "Nothing outside the mirror is read, hashed or requested",
)
@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_file_name_that_is_not_plain_is_refused_everywhere_before_any_read(beside, http_server, name):
    files = beside["document"]["datasets"]["mini_mnist"]["files"]
    files["test-labels"] = {**files["test-labels"], "filename": name}
    with pytest.raises(
        CatalogError, match=r"^dataset mini_mnist, key files/test-labels/filename: .*(plain|empty)"
    ):
        parse_catalog(beside["document"])

    dataset = beside["dataset"]
    hostile = _unchecked(dataset, "test-labels", filename=name)
    prefix = f"hostile-{beside['mirror'].parent.name}"
    mirrors = [beside["mirror"].as_uri() + "/", http_server.mount(prefix, beside["mirror"])]
    urls = [mirror + name for mirror in mirrors]
    with pytest.raises(download.DownloadError, match=r"^mini_mnist/files/test-labels: .*Nothing was read"):
        download.fetch(dataset, hostile, urls)
    with pytest.raises(download.DownloadError, match=r"^mini_mnist/files/test-labels: .*Nothing was read"):
        download.fingerprint(dataset, hostile, urls)
    # an HTTP server decodes %2E%2E%2F into ../ itself: the refusal above is what keeps such a path from
    # ever being requested
    assert [path for path in http_server.requests if path.startswith(f"/{prefix}/")] == []


@scenario(
    "Security",
    "A symlink in a directory mirror that leads out of it (to a decoy beside the mirror), and one that "
    "stays inside",
    "The one leading out is refused (`leads out of the mirror directory`), by the download and the "
    "fingerprint alike; the one inside is read",
    "Nothing outside the mirror is read or hashed",
)
def test_a_symlink_leading_out_of_the_mirror_is_refused_and_one_inside_is_followed(beside):
    dataset, mirror = beside["dataset"], beside["mirror"]
    name = "train-labels-idx1-ubyte.gz"
    (mirror / name).unlink()
    (mirror / name).symlink_to(beside["outside"] / name)
    decoy = _unchecked(dataset, "train-labels", **beside["pins"])  # pins of the decoy: only the path stops it
    url = mirror.as_uri() + "/" + name
    with pytest.raises(download.DownloadError, match="leads out of the mirror directory"):
        download.fetch(dataset, decoy, [url])
    assert download.fingerprint(dataset, decoy, [url]) is None  # as if the mirror did not answer

    (mirror / "inside").mkdir()
    (mirror / "inside" / name).symlink_to(mirror / "t10k-labels-idx1-ubyte.gz")
    (mirror / name).unlink()
    (mirror / name).symlink_to(Path("inside") / name)  # a chain of two links, both inside
    pinned = _unchecked(dataset, "test-labels", filename=name)  # the test labels' pins, under this name
    assert download.fetch(dataset, pinned, [url]).payload_sha256 == pinned.payload_sha256
    assert download.fingerprint(dataset, pinned, [url])["payload_sha256"] == pinned.payload_sha256


HOSTED = "file://files.example.com/srv/mirror/"


@scenario(
    "Security",
    "A `file://` mirror naming a host (`file://files.example.com/srv/mirror/`), in the catalog, in "
    "`MNIST_ASSETS_MIRROR_<DATASET>` or in run config; or with a `?`/`#` cutting its path short",
    "Refused naming the dataset, the mirror and the host, saying to write `file:///srv/mirror/` or an "
    "http(s) URL; `file://localhost/...` is read as local",
    "Nothing is read from this machine's `/srv/mirror/` in the host's stead",
)
@pytest.mark.parametrize("where", ["catalog", "environment", "run config", "download"])
def test_a_file_mirror_naming_another_host_is_refused_wherever_it_is_given(beside, where):
    dataset = beside["dataset"]
    expected = rf"mirror '{HOSTED}' names host 'files.example.com'.* write file:///srv/mirror/"
    if where == "catalog":
        beside["document"]["datasets"]["mini_mnist"]["mirrors"] = [HOSTED]
        with pytest.raises(CatalogError, match="^dataset mini_mnist, key mirrors: " + expected):
            parse_catalog(beside["document"])
    elif where == "environment":
        with pytest.raises(SettingError, match="^MNIST_ASSETS_MIRROR_MINI_MNIST='.*': " + expected):
            dataset.resolve_mirrors(environ={dataset.mirror_env_var: f"{beside['mirror']},{HOSTED}"})
    elif where == "run config":
        with pytest.raises(CatalogError, match="^dataset mini_mnist: " + expected):
            dataset.resolve_mirrors([HOSTED])
    else:  # a URL made without the catalog
        file = dataset.file("test-labels")
        with pytest.raises(download.DownloadError, match="names host 'files.example.com'"):
            download.fetch(dataset, file, [HOSTED + file.filename])
        assert download.fingerprint(dataset, file, [HOSTED + file.filename]) is None


def test_a_file_mirror_on_localhost_is_local_and_a_cut_short_path_is_refused(beside):
    dataset, mirror = beside["dataset"], beside["mirror"]
    (local,) = dataset.resolve_mirrors([f"file://localhost{mirror}"])
    file = dataset.file("test-labels")
    assert download.fetch(dataset, file, [local + file.filename]).payload_sha256 == file.payload_sha256
    for cut in (f"file://{mirror}#1/", f"file://{mirror}?x/"):
        with pytest.raises(
            CatalogError, match=r"^dataset mini_mnist: mirror .* has a '\?' or '#' after its path"
        ):
            dataset.resolve_mirrors([cut])
