"""Where steps run is chosen in one place (``MNIST_ASSETS_EXECUTOR``, read by mnist_assets.definitions);
the runs on Celery themselves are in mnist_assets_tests/deploy (``make test-deploy``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from mnist_assets.catalog import parse_catalog
from mnist_assets.definitions import build_definitions, configured_executor
from mnist_assets.rebuild.refresh import refresh
from mnist_assets.settings import CELERY_BROKER_ENV
from mnist_assets_tests.support import REPO


def test_steps_run_in_process_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("MNIST_ASSETS_EXECUTOR", raising=False)
    assert configured_executor() is dg.in_process_executor
    monkeypatch.setenv("MNIST_ASSETS_EXECUTOR", "celery")
    assert configured_executor().name == "celery"


def test_an_unknown_executor_is_refused_naming_the_variable_and_the_choices():
    with pytest.raises(ValueError, match=r"MNIST_ASSETS_EXECUTOR='dask'.*in_process, celery"):
        configured_executor("dask")


def test_the_workers_read_the_broker_from_the_same_variable_as_the_runs():
    config = yaml.safe_load((REPO / "deploy" / "celery.yaml").read_text())["execution"]["config"]
    assert config == {"broker": {"env": CELERY_BROKER_ENV}, "backend": {"env": CELERY_BROKER_ENV}}


def test_the_reconstructable_asset_job_is_the_definitions_implicit_job_rebuilt_by_import(mini_catalog):
    """As a Celery worker does: a fresh process rebuilds the job from the module and its environment."""
    code = (
        "import json; from mnist_assets import dagster_private; "
        "job = dagster_private.reconstructable_asset_job('mnist_assets.definitions').get_definition(); "
        "keys = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys); "
        "print(json.dumps([job.name, job.executor_def.name, keys]))"
    )
    env = {**os.environ, "MNIST_ASSETS_CATALOG": str(mini_catalog["path"]), "MNIST_ASSETS_EXECUTOR": "celery"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    name, executor, keys = json.loads(out.stdout)
    assert (name, executor) == ("__ASSET_JOB", "celery")
    assert {"mini_mnist/raw_gzip", "mini_mnist/checkpoint"} <= set(keys)
    assert not [key for key in keys if not key.startswith("mini_mnist/")]


def test_refresh_on_another_executor_refuses_definitions_the_workers_could_not_rebuild(empty_project):
    """Workers import mnist_assets.definitions: definitions built some other way would diverge there."""
    celery_defs = build_definitions(
        parse_catalog(empty_project.document),
        str(empty_project.storage),
        executor=configured_executor("celery"),
    )
    with pytest.raises(
        ValueError, match=r"celery executor runs the job rebuilt from mnist_assets\.definitions"
    ):
        refresh(celery_defs, empty_project.instance, ["mini_mnist"], log=lambda m: None)
    assert not empty_project.instance.get_runs()  # refused before observing or running anything
