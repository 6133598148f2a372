"""Refresh does the minimum: proofs counted from the event log, on the small real mirror."""

import gzip
import importlib.util
import json
import sys
import types
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np

import mnist_assets.assets
import mnist_assets.assets.checkpoints
import mnist_assets.assets.splits
from mnist_assets import models
from mnist_assets.rebuild.refresh import refresh
from mnist_assets.status import dataset_status
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, write_idx_gz
from mnist_assets_tests.test_faults_crashes import kill_a_refresh_mid_checkpoint


def test_a_second_refresh_with_nothing_changed_computes_nothing(project):
    summary, delta = project.refresh()
    assert delta == Counter()
    assert summary.ran == [] and summary.fresh == 13
    assets = ("raw_gzip", "idx", "shards", "checkpoint", "best_model")
    assert set(summary.artifacts) == {f"mini_mnist/{a}" for a in assets}


def test_a_training_config_change_recomputes_only_the_checkpoint_and_the_choice(project):
    project.dataset["training"]["epochs"] = 2
    summary, delta = project.refresh()
    assert delta == Counter({("checkpoint", "cnn"): 1, ("best_model", None): 1})
    assert summary.ran[0].causes == ["has a new dependency data version (mini_mnist/model_configs[cnn])"]


def test_a_shard_setting_change_recomputes_the_shards_and_the_checkpoint(project):
    project.dataset["shards"] = {"rows_per_shard": 700}
    _, delta = project.refresh()
    assert delta == Counter(
        {
            ("shards", "train"): 1,
            ("shards", "test"): 1,
            ("shards", "holdout"): 1,
            ("checkpoint", "cnn"): 1,
            ("best_model", None): 1,
        }
    )


def test_new_bytes_for_one_file_recompute_only_what_is_built_from_it(project):
    labels = project.arrays["train-labels"].copy()
    labels[:10] = (labels[:10] + 1) % 10
    digest = write_idx_gz(project.mirror / MINI_FILENAMES["train-labels"], labels)
    project.dataset["files"]["train-labels"]["payload_sha256"] = digest
    summary, delta = project.refresh()
    assert delta == Counter(
        {
            ("raw_gzip", "train-labels"): 1,
            ("idx", "train-labels"): 1,
            ("shards", "train"): 1,
            ("shards", "test"): 1,
            ("checkpoint", "cnn"): 1,
            ("best_model", None): 1,
        }
    )
    assert summary.ran[0].causes == ["has a new dependency data version (mini_mnist/urls[train-labels])"]


def test_a_redownload_with_an_identical_payload_recomputes_nothing_downstream(project):
    # the mirror now serves a re-compressed file: other gzip bytes (a new ETag), same payload
    path = project.mirror / MINI_FILENAMES["test-images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    summary, delta = project.refresh()
    assert delta == Counter({("raw_gzip", "test-images"): 1})
    assert summary.ran[0].causes == ["has a new dependency data version (mini_mnist/urls[test-images])"]
    assert (project.storage / "mini_mnist/raw_gzip/test-images.gz").read_bytes() == path.read_bytes()
    again, delta = project.refresh()  # the new ETag is the one that last verified: nothing to do
    assert again.ran == [] and delta == Counter()


def test_new_bytes_that_break_the_pin_fail_clearly_and_keep_the_last_good_file(project):
    stored = project.storage / "mini_mnist/raw_gzip/train-labels.gz"
    good = stored.read_bytes()
    labels = project.arrays["train-labels"].copy()
    labels[:10] = (labels[:10] + 1) % 10
    write_idx_gz(project.mirror / MINI_FILENAMES["train-labels"], labels)  # the catalog pin stays
    summary, delta = project.refresh()
    assert delta == Counter()
    assert summary.ran == [] and [(s.asset, s.partition) for s in summary.failed] == [
        ("mini_mnist/raw_gzip", "train-labels")
    ]
    error = summary.failed[0].error
    assert "mini_mnist: could not fetch train-labels" in error and project.url in error
    assert "≠ pinned payload_sha256" in error and "MNIST_ASSETS_MIRROR_MINI_MNIST" in error
    assert stored.read_bytes() == good


def test_changed_compute_code_recomputes_that_asset_and_downstream_only(project, tmp_path):
    """Build the graph with a copy of the shards stage's module whose code differs, as an edit would."""
    edited_splits = edited_copy(
        mnist_assets.assets.splits, "config.options()  # a SPLITS partition\n", tmp_path
    )

    def dataset_assets(dataset, judgement):
        return [
            edited_splits.shards_asset(dataset, judgement) if asset.key.path[-1] == "shards" else asset
            for asset in mnist_assets.assets.dataset_assets(dataset, judgement)
        ]

    module = types.SimpleNamespace(dataset_assets=dataset_assets)
    summary, delta = project.refresh(project.defs(module))
    # the shards rerun; their content is identical, so the checkpoint stays fresh
    assert delta == Counter({("shards", "train"): 1, ("shards", "test"): 1, ("shards", "holdout"): 1})
    assert all(step.causes == ["has a new code version"] for step in summary.ran)


def edited_copy(module: types.ModuleType, line: str, directory: Path) -> types.ModuleType:
    """A copy of ``module`` whose ``line`` (in an asset's body, so in its code version) has a comment
    added, imported under a name of its own: what an edit that changes no result looks like."""
    text = Path(module.__file__).read_text()
    edited = text.replace(line, line.replace("\n", "  # edited: a comment is enough\n"), 1)
    assert edited != text, f"{line!r} is not in {module.__name__}"
    name = f"edited_{module.__name__.rpartition('.')[2]}"
    (directory / f"{name}.py").write_text(edited)
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy
    spec.loader.exec_module(copy)
    return copy


def checkpoint_data_version(project) -> str:
    key = dg.AssetKey(["mini_mnist", "checkpoint"])
    event = project.instance.get_latest_materialization_event(key)
    return event.asset_materialization.tags["dagster/data_version"]


def test_a_retrain_that_reproduces_the_model_keeps_its_version_and_best_model(project, tmp_path):
    """The checkpoint's code changes (a comment in its body): it retrains on the same shards with the
    same settings, gets the same model, so the same file and data version; best_model stays fresh and
    storage keeps no second version of the same model."""
    edited = edited_copy(mnist_assets.assets.checkpoints, "name = context.partition_key\n", tmp_path)

    def dataset_assets(dataset, judgement):
        configs = models.training_configs(dataset)
        return [
            edited.checkpoint_asset(dataset, configs, judgement)
            if asset.key.path[-1] == "checkpoint"
            else asset
            for asset in mnist_assets.assets.dataset_assets(dataset, judgement)
        ]

    cnn = project.storage / "mini_mnist/checkpoint/cnn"
    kept = project.storage / "_versions/mini_mnist/checkpoint/cnn"
    before = (
        checkpoint_data_version(project),
        (cnn / "checkpoint.json").read_bytes(),
        sorted(kept.iterdir()),
    )
    summary, delta = project.refresh(project.defs(types.SimpleNamespace(dataset_assets=dataset_assets)))
    assert [(step.asset, step.causes) for step in summary.ran] == [
        ("mini_mnist/checkpoint", ["has a new code version"])
    ]
    assert delta == Counter({("checkpoint", "cnn"): 1})
    after = (checkpoint_data_version(project), (cnn / "checkpoint.json").read_bytes(), sorted(kept.iterdir()))
    assert after == before


def test_a_deleted_artifact_is_missing_and_rebuilt(project):
    victim = project.storage / "mini_mnist/idx/test-labels.npy"
    victim.unlink()
    rows = dataset_status(project.instance, project.defs(), "mini_mnist")
    assert [(r["asset"], r["partition"]) for r in rows if not r["materialized"]] == [
        ("mini_mnist/idx", "test-labels")
    ]
    summary, delta = project.refresh(dry_run=True)
    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.ran] == [("mini_mnist/idx", "test-labels")]
    assert "artifact missing from storage" in summary.ran[0].causes[0]
    _, delta = project.refresh()
    assert delta == Counter({("idx", "test-labels"): 1})
    np.testing.assert_array_equal(np.load(victim), project.arrays["test-labels"])


def test_dry_run_prints_the_plan_with_causes_and_changes_nothing(project):
    project.dataset["training"]["epochs"] = 2
    project.dataset["shards"] = {"rows_per_shard": 700}
    summary, delta = project.refresh(dry_run=True)
    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.ran] == [
        ("mini_mnist/shards", "train"),
        ("mini_mnist/shards", "test"),
        ("mini_mnist/shards", "holdout"),
        ("mini_mnist/checkpoint", "cnn"),
    ]
    assert json.loads(json.dumps(summary.to_dict()))["dry_run"] is True


def instance_state(instance: dg.DagsterInstance) -> tuple:
    """What a write to the instance changes: its runs (status and tags) and its newest event's id."""
    runs = {
        r.dagster_run.run_id: (r.dagster_run.status, r.dagster_run.tags) for r in instance.get_run_records()
    }
    return len(runs), instance.event_log_storage.get_maximum_record_id(), runs


@scenario(
    "Crashes and concurrency",
    "`refresh --dry-run` while a SIGKILLed refresh's run is still STARTED and a mirror file changed",
    "The plan as a refresh would run it: `would mark run … failed: its process (pid N) disappeared`, the "
    "changed file's raw_gzip with the cause its new observation gives (observed in process), the "
    "checkpoint; nothing written to the instance: no run, no event, no status change",
    "The instance as it was; the next refresh marks the run, observes and runs what the plan listed",
)
def test_a_dry_run_writes_nothing_to_the_instance_and_still_plans_what_a_refresh_does(project):
    run_id = kill_a_refresh_mid_checkpoint(project)  # its process observed the new training settings
    path = project.mirror / MINI_FILENAMES["test-images"]  # a new ETag, not observed by anyone yet
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=4242))
    before, said = instance_state(project.instance), []

    plan = refresh(project.defs(), project.instance, ["mini_mnist"], dry_run=True, log=said.append)

    assert instance_state(project.instance) == before
    assert any(line.startswith(f"would mark run {run_id} failed: its process (pid ") for line in said), said
    causes = {(s.asset.split("/")[-1], s.partition): s.causes for s in plan.ran}
    assert causes == {
        ("raw_gzip", "test-images"): [
            "has a new dependency data version (mini_mnist/urls[test-images]), observed by this dry run, "
            "not recorded"
        ],
        ("checkpoint", "cnn"): ["has a new dependency data version (mini_mnist/model_configs[cnn])"],
    }

    done, _ = project.refresh()
    assert project.instance.get_run_record_by_id(run_id).dagster_run.status == dg.DagsterRunStatus.FAILURE
    ran = {(s.asset, s.partition) for s in done.ran}
    assert {(s.asset, s.partition) for s in plan.ran} <= ran
    assert ran <= {(s.asset, s.partition) for s in plan.ran + plan.waiting_on_upstream}


def test_a_cold_refresh_builds_each_file_and_its_array_in_one_run(empty_project):
    """Both must be built whatever the download yields, so they share a run (each run has a fixed cost),
    as do the last checkpoint and the choice built from every checkpoint; a partition that might stay
    fresh is still judged after its input (the tests above)."""
    summary, delta = empty_project.refresh()
    assert not summary.failed and not summary.blocked and len(summary.ran) == 13
    assert all(step.seconds is not None and step.seconds > 0 for step in summary.ran)
    run_of: dict[tuple[str, str | None], str] = {}
    for asset in ("raw_gzip", "idx", "shards", "checkpoint", "best_model"):
        key = dg.AssetKey(["mini_mnist", asset])
        for record in empty_project.instance.fetch_materializations(key, limit=100).records:
            run_of[(asset, record.partition_key)] = record.run_id
    assert len(run_of) == 13 and sum(delta.values()) == 13
    for file_key in MINI_FILENAMES:
        assert run_of[("raw_gzip", file_key)] == run_of[("idx", file_key)]
    # files, splits, checkpoint[cnn] with best_model: never built, it is due whatever the checkpoint is
    assert run_of[("checkpoint", "cnn")] == run_of[("best_model", None)]
    assert len(set(run_of.values())) == 4 + 3 + 1


def test_a_selection_judges_and_runs_only_what_it_selects(project):
    """``--select``: each selected partition judged as a whole refresh judges it; nothing else is run,
    however stale (the deleted gzip file, the checkpoint built from the new shards)."""
    (project.storage / "mini_mnist/raw_gzip/test-labels.gz").unlink()
    project.dataset["shards"] = {"rows_per_shard": 700}

    summary, delta = project.refresh(select="shards[holdout]")
    assert delta == Counter({("shards", "holdout"): 1}) and summary.fresh == 0

    summary, delta = project.refresh(select="shards")  # holdout is fresh now
    assert delta == Counter({("shards", "train"): 1, ("shards", "test"): 1}) and summary.fresh == 1

    summary, delta = project.refresh(select="+shards")  # upstream too: the missing file
    assert delta == Counter({("raw_gzip", "test-labels"): 1})
    assert summary.fresh == 3 + 4 + 3  # its content is the same, so what is built from it stays fresh

    _, delta = project.refresh()  # what the selections left: the checkpoint and the choice
    assert delta == Counter({("checkpoint", "cnn"): 1, ("best_model", None): 1})


def test_a_partition_selection_takes_no_companion_it_did_not_select(empty_project):
    """A cold raw_gzip[x] shares its run with idx[x] only when idx[x] is selected too; ``+`` from a
    partition reaches the partitions it is built from, not the asset's others."""
    _, delta = empty_project.refresh(select="raw_gzip[train-labels]")
    assert delta == Counter({("raw_gzip", "train-labels"): 1})

    _, delta = empty_project.refresh(select="+idx[test-labels]")
    assert delta == Counter({("raw_gzip", "test-labels"): 1, ("idx", "test-labels"): 1})
    runs = {
        record.run_id
        for asset in ("raw_gzip", "idx")
        for record in empty_project.instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey(["mini_mnist", asset]), asset_partitions=["test-labels"]),
            limit=9,
        ).records
    }
    assert len(runs) == 1  # both selected, both missing: one run, as in a whole cold refresh
