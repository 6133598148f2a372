"""Observing the sources: no run for it, and a source is the payload, not the way to it.

Observations are reported as runless events, so a refresh (cold or with nothing to do) makes runs only
for what it materializes. A file's data version is its pinned payload unless a mirror gives evidence it
serves other bytes: a mirror override, a trailing slash, another directory holding the same files or a
HEAD that failed once leave everything fresh; a mirror serving another payload still makes its raw
partition stale, and the rebuild fails clearly.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg

from mnist_assets import settings
from mnist_assets.tags import ANSWERED
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, write_idx_gz

MIRROR_VARIABLE = settings.mirror_variable("mini_mnist")
URLS = dg.AssetKey(["mini_mnist", "urls"])
SHARED_DATABASES = {"index.db", "runs.db", "schedules.db", ".db"}
"""The instance's SQLite files that are not one run's event log (``.db``: every runless event's)."""


def databases(instance: dg.DagsterInstance) -> set[str]:
    return {path.name for path in Path(instance.root_directory).rglob("*.db")}


def latest_observation(instance: dg.DagsterInstance, file_key: str) -> dg.AssetObservation:
    records_filter = dg.AssetRecordsFilter(asset_key=URLS, asset_partitions=[file_key])
    found = instance.fetch_observations(records_filter, limit=1).records[0].asset_observation
    assert found is not None
    return found


def assert_runs_only_materialize(instance: dg.DagsterInstance) -> set[str]:
    """Every run materialized something (none observed) and every observation is runless; the run ids."""
    runs = instance.get_runs()
    for run in runs:
        materialized = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        observed = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
        assert materialized and not observed.records, (run.job_name, run.run_id)
    for key in (URLS, dg.AssetKey(["mini_mnist", "model_configs"])):
        records = instance.fetch_observations(key, limit=100).records
        assert records and all(record.run_id == "" for record in records), key
    return {run.run_id for run in runs}


def test_a_cold_and_a_no_op_refresh_make_no_run_and_no_event_log_database_for_observing(empty_project):
    instance = empty_project.instance
    summary, _ = empty_project.refresh()
    assert not summary.failed and len(summary.ran) == 13
    run_ids = assert_runs_only_materialize(instance)
    assert len(run_ids) == 4 + 3 + 1  # files, splits, checkpoint[cnn] with best_model
    assert databases(instance) - SHARED_DATABASES == {f"{run_id}.db" for run_id in run_ids}

    before = databases(instance)
    again, delta = empty_project.refresh()
    assert again.ran == [] and delta == Counter()
    assert assert_runs_only_materialize(instance) == run_ids  # observed again, still no new run
    assert databases(instance) == before
    assert len(instance.fetch_observations(URLS, limit=100).records) == 2 * 4


def test_another_spelling_or_another_http_mirror_of_the_same_files_runs_nothing(
    project, http_server, monkeypatch
):
    other = project.directory / "other-mirror"
    other.mkdir()
    for name in MINI_FILENAMES.values():
        shutil.copy(project.mirror / name, other / name)  # same bytes, new mtimes: other headers
    served_elsewhere = http_server.mount(f"other-{project.directory.name}", other)
    for mirror in (project.url.rstrip("/"), project.url, served_elsewhere.rstrip("/")):
        monkeypatch.setenv(MIRROR_VARIABLE, mirror)
        summary, delta = project.refresh()
        assert summary.ran == [] and not summary.failed and delta == Counter(), mirror
    seen = latest_observation(project.instance, "train-images")
    assert seen.metadata["mirror"].value == served_elsewhere + MINI_FILENAMES["train-images"]


def _local_mirror_project(project, copy_to: Path) -> Path:
    """The project's catalog listing a local copy of its mirror as ``<dir>/``, as the catalog lists
    the Debian Fashion-MNIST directory."""
    shutil.copytree(project.mirror, copy_to)
    project.dataset["mirrors"] = [f"{copy_to}/"]
    return copy_to


@scenario(
    "Files",
    "`make offline` (the mirror variable set to a directory without its trailing slash) followed by "
    "`make refresh` (the catalog's spelling of that directory, with the slash)",
    "The refresh runs nothing: a local mirror's observation is its payload, equal to the pin",
    "Everything the offline build made",
)
def test_make_offline_then_make_refresh_runs_nothing(empty_project, monkeypatch, tmp_path):
    local = _local_mirror_project(empty_project, tmp_path / "datasets" / "mini-mnist")
    monkeypatch.setenv(MIRROR_VARIABLE, str(local))  # what `make offline` sets: no trailing slash
    built, _ = empty_project.refresh()
    assert not built.failed and len(built.ran) == 13
    monkeypatch.delenv(MIRROR_VARIABLE)  # `make refresh`: the catalog's own spelling
    summary, delta = empty_project.refresh()
    assert summary.ran == [] and not summary.failed and delta == Counter()

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(local, elsewhere)
    monkeypatch.setenv(MIRROR_VARIABLE, f"{elsewhere}/")
    summary, delta = empty_project.refresh()
    assert summary.ran == [] and delta == Counter()


@scenario(
    "Files",
    "A local mirror whose file now holds another payload than the catalog pins",
    "Its raw_gzip partition is stale and fails clearly (`≠ pinned payload_sha256`, the variable to set); "
    "the other files stay fresh",
    "The last good raw file and everything built from it",
)
def test_a_local_mirror_serving_another_payload_makes_raw_stale_and_fails_clearly(empty_project, tmp_path):
    local = _local_mirror_project(empty_project, tmp_path / "local")
    built, _ = empty_project.refresh()
    assert not built.failed
    stored = empty_project.storage / "mini_mnist/raw_gzip/train-labels.gz"
    good = stored.read_bytes()
    labels = empty_project.arrays["train-labels"].copy()
    labels[:10] = (labels[:10] + 1) % 10
    write_idx_gz(local / MINI_FILENAMES["train-labels"], labels)  # the pin stays
    summary, delta = empty_project.refresh()
    assert delta == Counter() and summary.ran == []
    assert [(s.asset, s.partition) for s in summary.failed] == [("mini_mnist/raw_gzip", "train-labels")]
    assert summary.failed[0].causes == ["has a new dependency data version (mini_mnist/urls[train-labels])"]
    error = summary.failed[0].error
    assert "≠ pinned payload_sha256" in error and MIRROR_VARIABLE in error
    assert stored.read_bytes() == good


@scenario(
    "Network",
    "HTTP 500 on one file's HEAD while a cold build observes the mirror, then again on a later refresh",
    "The build fetches and verifies the pinned payload anyway; the next refreshes run nothing (the pin's "
    "version is recorded, and a later failed HEAD keeps the previous one)",
    "Everything built; nothing downloaded twice",
)
def test_a_head_that_failed_during_a_cold_build_leaves_nothing_to_do(empty_project, http_server):
    path = urlsplit(empty_project.url + MINI_FILENAMES["train-images"]).path
    http_server.head_faults[path] = [500]
    built, _ = empty_project.refresh()
    assert not built.failed and len(built.ran) == 13
    first = latest_observation(empty_project.instance, "train-images")
    assert first.metadata[ANSWERED].value is False and first.metadata["mirror"].value == "none answered"

    summary, delta = empty_project.refresh()
    assert summary.ran == [] and delta == Counter()
    answered = latest_observation(empty_project.instance, "train-images")
    assert answered.metadata[ANSWERED].value is True and answered.data_version == first.data_version

    http_server.head_faults[path] = [500]
    summary, delta = empty_project.refresh()
    assert summary.ran == [] and delta == Counter()
    assert latest_observation(empty_project.instance, "train-images").data_version == first.data_version


def test_observing_in_a_run_records_what_the_schedule_records_without_one(project):
    """The observe_sources job (and the UI's Observe button) calls the same observer inside a run: the
    same data versions and metadata, so the asset page shows both alike."""
    runs = len(project.instance.get_runs())
    project.run_daily_schedule()
    assert len(project.instance.get_runs()) == runs
    runless = {key: latest_observation(project.instance, key) for key in MINI_FILENAMES}
    job = project.defs().resolve_job_def("observe_sources")
    assert job.execute_in_process(instance=project.instance).success
    in_run = {key: latest_observation(project.instance, key) for key in MINI_FILENAMES}
    for key in MINI_FILENAMES:
        assert in_run[key].data_version == runless[key].data_version, key
        assert in_run[key].metadata == runless[key].metadata, key
