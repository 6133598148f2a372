"""Mistakes in the catalog and in MNIST_ASSETS_* settings, as a user meets them: real `mnist-assets` and
`dagster` processes. One line naming where and what, exit 2, and every other dataset keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from mnist_assets.definitions import build_definitions
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import REPO

DAGSTER = os.path.join(os.path.dirname(sys.executable), "dagster")
SUBCOMMANDS = ("refresh", "prepare", "status", "history", "rollback", "gc")


def with_bad_dataset(project) -> str:
    """Add ``my_ds`` (the mini dataset's entry with a one-number image_shape) to the project's catalog;
    the line every command must print for it."""
    entry = json.loads(json.dumps(project.dataset))
    project.document["datasets"]["my_ds"] = {**entry, "image_shape": [28]}
    return (
        f"catalog {project.directory / 'cli_catalog.json'}, dataset my_ds, key image_shape: found [28], "
        "expected two positive integers [height, width], e.g. [28, 28]"
    )


def one_line(out: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    return out.stderr.strip()


@scenario(
    "Catalog",
    'One catalog entry is wrong (`"image_shape": [28]` in a user\'s `MNIST_ASSETS_CATALOG`) beside good ones',
    "`refresh`, `status`, `prepare`, `history`, `rollback`, `gc` of that dataset print one line, "
    "`catalog <file>, dataset my_ds, key image_shape: found [28], expected two positive integers ...`, "
    "and exit 2; the other datasets refresh and report as before (exit 0); a refresh of every dataset "
    "refreshes the good ones, prints the line last and exits 2",
    "Every other dataset, its artifacts and its commands",
)
def test_a_wrong_catalog_entry_is_one_line_and_breaks_only_its_dataset(empty_project):
    project = empty_project
    line = with_bad_dataset(project)
    for command, *rest in (
        ("refresh",),
        ("status",),
        ("prepare",),
        ("history", "shards", "train"),
        ("rollback", "shards", "train", "--to", "abc"),
        ("gc",),
    ):
        out = project.cli(command, "my_ds", *rest)
        assert out.returncode == 2 and one_line(out) == f"mnist-assets {command}: {line}"
        assert out.stdout == ""

    built = project.cli("refresh", "mini_mnist")
    assert built.returncode == 0, built.stderr
    assert len(json.loads(built.stdout)["ran"]) == 13 and line not in built.stderr
    status = project.cli("status", "mini_mnist")
    assert status.returncode == 0 and "MISSING" not in status.stdout, status.stdout + status.stderr

    everything = project.cli("refresh")
    assert everything.returncode == 2
    assert everything.stderr.splitlines()[-1] == f"mnist-assets refresh: {line}"
    summary = json.loads(everything.stdout)
    assert summary["datasets"] == ["mini_mnist"] and summary["ran"] == [] and summary["fresh"] == 13
    assert summary["catalog_errors"] == {"my_ds": line}


@scenario(
    "Catalog",
    "The catalog file itself is wrong: not there, or not JSON",
    "Every command prints one line naming the catalog file and what is wrong with it (`not valid JSON: "
    "Expecting ...: line 1 column 2`) and exits 2; the traceback only with `--verbose`",
    "Everything stored",
)
def test_a_catalog_file_that_cannot_be_read_is_one_line_naming_it(empty_project):
    project = empty_project
    command, env = project.cli_command("status", "mini_mnist")
    catalog = project.directory / "broken.json"
    catalog.write_text("{datasets: {}}")
    env["MNIST_ASSETS_CATALOG"] = str(catalog)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert one_line(out).startswith(f"mnist-assets status: catalog {catalog}: not valid JSON: Expecting")

    env["MNIST_ASSETS_CATALOG"] = str(project.directory / "absent.json")
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert one_line(out) == (
        f"mnist-assets status: catalog {project.directory / 'absent.json'}: cannot read it: "
        "No such file or directory"
    )
    verbose = subprocess.run(
        [*command[:3], "--verbose", *command[3:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


@scenario(
    "Catalog",
    "`mnist-assets --help` (or any subcommand's) while the catalog file is missing and a setting is wrong",
    "The help, exit 0: it loads neither the catalog nor the Dagster definitions",
    "Everything",
)
def test_help_needs_neither_the_catalog_nor_the_settings(empty_project):
    command, env = empty_project.cli_command("--help")
    env |= {"MNIST_ASSETS_CATALOG": "/nonexistent/catalog.json", "MNIST_ASSETS_EXECUTOR": "nope"}
    for args in (["--help"], *([subcommand, "--help"] for subcommand in SUBCOMMANDS)):
        out = subprocess.run([*command[:3], *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("usage: mnist-assets"), out.stderr
        assert out.stderr == ""


@scenario(
    "Catalog",
    "A wrong `MNIST_ASSETS_*` setting: `KEEP_VERSIONS=abc`, `LEASE_SECONDS=-1`, `RETRY_BACKOFF=soon`, "
    "`REFRESH_CRON='0 25 * * *'`, `EXECUTOR=nope`, a `MIRROR_<DATASET>` with an `ftp://` URL",
    "One line naming the variable, the value found and what to set it to, exit 2 (a mirror override "
    "breaks its dataset only)",
    "Everything stored",
)
@pytest.mark.parametrize(
    "variable, value, expected",
    [
        (
            "MNIST_ASSETS_KEEP_VERSIONS",
            "abc",
            "MNIST_ASSETS_KEEP_VERSIONS='abc': set it to how many versions",
        ),
        ("MNIST_ASSETS_LEASE_SECONDS", "-1", "MNIST_ASSETS_LEASE_SECONDS='-1': set it to a positive number"),
        (
            "MNIST_ASSETS_RETRY_BACKOFF",
            "soon",
            "MNIST_ASSETS_RETRY_BACKOFF='soon': set it to a positive number",
        ),
        (
            "MNIST_ASSETS_REFRESH_CRON",
            "0 25 * * *",
            "MNIST_ASSETS_REFRESH_CRON='0 25 * * *': set it to a cron expression of 5 fields",
        ),
        (
            "MNIST_ASSETS_EXECUTOR",
            "nope",
            "MNIST_ASSETS_EXECUTOR='nope' is not an executor this project runs; set it to one of in_process",
        ),
        (
            "MNIST_ASSETS_MIRROR_MINI_MNIST",
            "ftp://127.0.0.1/m/",
            "dataset mini_mnist: MNIST_ASSETS_MIRROR_MINI_MNIST='ftp://127.0.0.1/m/': mirror "
            "'ftp://127.0.0.1/m/' uses scheme 'ftp'; only http, https, file are allowed",
        ),
    ],
)
def test_a_wrong_setting_is_one_line_naming_the_variable(empty_project, variable, value, expected):
    command, env = empty_project.cli_command("refresh", "mini_mnist")
    out = subprocess.run(command, env={**env, variable: value}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and one_line(out).startswith(f"mnist-assets refresh: {expected}")


@scenario(
    "Catalog",
    "A wrong catalog entry, loaded by Dagster (`dagster definitions validate`, the code location of "
    "`dagster dev`)",
    "The code location loads; the broken dataset's group holds one asset, `<dataset>/catalog_error`, whose "
    "description is the one line, and its check `catalog_entry_is_valid` fails with it when run",
    "Every other dataset's assets, sensors and schedule",
)
def test_the_code_location_loads_and_shows_a_broken_datasets_error(empty_project):
    project = empty_project
    line = with_bad_dataset(project)
    command, env = project.cli_command("--help")  # writes the catalog file
    validate = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "mnist_assets"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    shown = validate.stdout + validate.stderr
    assert validate.returncode == 0 and "Validation successful" in shown, shown

    from mnist_assets.catalog import read_catalog  # here: the test above runs on code without them too
    from mnist_assets.catalog_errors import ERROR_ASSET, catalog_errors

    defs = build_definitions(read_catalog(env["MNIST_ASSETS_CATALOG"]), str(project.storage))
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["my_ds", ERROR_ASSET])
    assert {k for k in graph.get_all_asset_keys() if k.path[0] == "my_ds"} == {key}
    assert graph.get(key).group_name == "my_ds" and line in (graph.get(key).description or "")
    assert graph.get(dg.AssetKey(["mini_mnist", "best_model"])).is_materializable
    assert catalog_errors(defs) == {"my_ds": line}
    # the sensor's tick: the good dataset's missing files are requested, the placeholder never
    tick = dg.evaluate_automation_conditions(defs=defs, instance=project.instance)
    requested = {k.to_user_string() for k in graph.get_all_asset_keys() if tick.get_num_requested(k)}
    assert requested == {"mini_mnist/raw_gzip"} and tick.total_requested == 4
    check = dg.define_asset_job("check_catalog", selection=dg.AssetSelection.checks_for_assets(key))
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[check])).resolve_job_def("check_catalog")
    result = job.execute_in_process(instance=project.instance, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.description == line


def test_an_entry_listed_under_a_key_that_is_no_dataset_id_breaks_only_itself(empty_project):
    from mnist_assets.catalog import read_catalog
    from mnist_assets.catalog_errors import catalog_errors
    from mnist_assets.rebuild.refresh import refresh

    project = empty_project
    project.document["datasets"]["Bad/Id"] = json.loads(json.dumps(project.dataset))
    path = project.directory / "catalog.json"
    path.write_text(json.dumps(project.document))
    defs = build_definitions(read_catalog(path), str(project.storage))
    dg.Definitions.validate_loadable(defs)  # no Dagster group or asset is named after the bad key
    line = (
        f"catalog {path}: dataset id 'Bad/Id' must be lowercase letters, digits and '_' "
        "(starting with a letter)"
    )
    assert catalog_errors(defs) == {"Bad/Id": line}
    summary = refresh(defs, project.instance, ["Bad/Id"], dry_run=True, log=lambda m: None)
    assert summary.catalog_errors == {"Bad/Id": line} and summary.datasets == []
    summary = refresh(defs, project.instance, [], dry_run=True, log=lambda m: None)
    assert summary.datasets == ["mini_mnist"] and summary.catalog_errors == {"Bad/Id": line}
