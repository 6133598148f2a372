"""Dagster's private APIs are used in one module only, and every name there still works.

An upgrade of Dagster that moves a private name fails here, naming it, before anything else does.
"""

from __future__ import annotations

import importlib
import re

import dagster as dg
import yaml

from mnist_assets import dagster_private, tags
from mnist_assets_tests.support import REPO

PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)


def test_only_dagster_private_imports_private_dagster_modules():
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("mnist_assets", "mnist_assets_tests", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "dagster_private.py" and PRIVATE_IMPORT.search(path.read_text())
    ]
    assert offenders == [], "import private Dagster names through mnist_assets/dagster_private.py"


def test_stale_status_resolver_and_runless_observations_work_on_a_real_instance():
    """An observation made with ``dagster_private.observation`` and reported without a run carries its
    data version as Dagster's own observe does: the resolver judges from it, and no run is made."""

    @dg.observable_source_asset(key="source")
    def source():
        return dg.DataVersion("v1")

    @dg.asset(deps=[source], code_version="1")
    def built():
        return 1

    defs = dg.Definitions(assets=[source, built])
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test() as instance:
        judge = dagster_private.stale_status_resolver(instance, graph)
        assert judge.get_status(built.key, None) == dagster_private.StaleStatus.MISSING

        instance.report_runless_asset_event(dagster_private.observation(source.key, None, "v1", {}))
        dg.materialize([built], instance=instance, selection=[built.key])
        fresh = dagster_private.stale_status_resolver(instance, graph)
        assert fresh.get_status(built.key, None) == dagster_private.StaleStatus.FRESH
        assert fresh.get_current_data_version(source.key, None).value == "v1"

        instance.report_runless_asset_event(dagster_private.observation(source.key, None, "v2", {"m": 1}))
        stale = dagster_private.stale_status_resolver(instance, graph)
        assert stale.get_status(built.key, None) == dagster_private.StaleStatus.STALE
        reasons = [c.reason for c in stale.get_stale_causes(built.key, None)]
        assert reasons == ["has a new dependency data version"]
        assert len(instance.get_runs()) == 1  # the materialization's; observing made none


def test_the_data_version_tag_the_project_reads_is_the_one_dagster_writes():
    assert tags.DATA_VERSION == dagster_private.DATA_VERSION_TAG


def test_the_private_classes_named_in_dagster_yaml_import():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    named = [section for section in config.values() if isinstance(section, dict) and "module" in section]
    assert named, "dagster.yaml names no module; drop this test and the note in dagster_private.py"
    for section in named:
        assert hasattr(importlib.import_module(section["module"]), section["class"]), section
