"""Nothing lost: bad data and bad models are refused before they are stored, on a real built project."""

import json
from collections import Counter
from urllib.parse import urlsplit

import dagster as dg

from mnist_assets.storage.io_managers import KerasIOManager
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, write_idx_gz


def _latest_check_passed(instance, name: str) -> bool:
    records = instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000, ascending=False
    )
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return next(e.passed for e in evaluations if e.check_name == name)


@scenario(
    "Nothing lost",
    "A pinned labels file with a label outside the class range",
    "idx fails with `mini_mnist/class_names: labels reach 12, class_names has 10 names` and the check; "
    "the failed check shows in the UI; shards do not run",
    "The previous idx array and every shard set",
)
def test_a_failed_blocking_check_keeps_bad_labels_from_storage_and_downstream(project):
    stored = project.storage / "mini_mnist/idx/train-labels.npy"
    good = stored.read_bytes()
    labels = project.arrays["train-labels"].copy()
    labels[7] = 12
    digest = write_idx_gz(project.mirror / MINI_FILENAMES["train-labels"], labels)
    project.dataset["files"]["train-labels"]["payload_sha256"] = digest  # the catalog now pins the bad file
    manifests = {p: p.read_bytes() for p in project.storage.glob("mini_mnist/shards/*/_manifest.json")}

    summary, delta = project.refresh()

    assert delta == Counter({("raw_gzip", "train-labels"): 1})
    assert [(s.asset, s.partition) for s in summary.failed] == [("mini_mnist/idx", "train-labels")]
    error = summary.failed[0].error
    assert "mini_mnist: idx[train-labels]" in error and MINI_FILENAMES["train-labels"] in error
    assert "labels_in_class_range" in error and "previous array is kept" in error
    assert "mini_mnist/class_names: labels reach 12, class_names has 10 names." in error
    assert _latest_check_passed(project.instance, "labels_in_class_range") is False
    assert stored.read_bytes() == good
    assert {p: p.read_bytes() for p in manifests} == manifests
    assert not any(s.asset == "mini_mnist/shards" for s in summary.ran)


@scenario(
    "Nothing lost",
    "A training run that ends below the accuracy floor",
    "checkpoint fails with the accuracy, the floor and what to change",
    "The last good checkpoint (still loads and verifies)",
)
def test_a_below_floor_model_never_replaces_the_last_good_checkpoint(project):
    record = project.storage / "mini_mnist/checkpoint/cnn/checkpoint.json"
    good = record.read_bytes()
    project.dataset["training"]["accuracy_floor"] = 0.9999

    summary, delta = project.refresh()

    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.failed] == [("mini_mnist/checkpoint", "cnn")]
    assert "below the floor 0.9999" in summary.failed[0].error
    assert "last good checkpoint is kept" in summary.failed[0].error
    assert _latest_check_passed(project.instance, "holdout_accuracy_above_floor") is False
    assert record.read_bytes() == good
    store = KerasIOManager(root=str(project.storage))
    kept = store.read(store.asset_dir(dg.AssetKey(["mini_mnist", "checkpoint"])), "cnn", "checkpoint")
    assert kept.record.metrics["holdout"]["accuracy"] >= 0.5


@scenario(
    "Nothing lost",
    "Training that raises (`conv_filters` of 5 layers: more 2×2 poolings than a 28×28 image allows)",
    "checkpoint fails with the error; refresh exits non-zero",
    "The last good checkpoint",
)
def test_a_training_run_that_raises_keeps_the_last_good_checkpoint(project):
    directory = project.storage / "mini_mnist/checkpoint/cnn"

    def files() -> dict[str, bytes]:  # the model, its record and its TensorBoard logs
        return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}

    before = files()
    assert any(name.startswith("tensorboard/") for name in before), sorted(before)
    project.dataset["training"]["conv_filters"] = [4] * 5  # valid alone; Keras refuses it for 28×28

    summary, delta = project.refresh()

    assert delta == Counter()
    assert [(s.asset, s.partition) for s in summary.failed] == [("mini_mnist/checkpoint", "cnn")]
    assert summary.failed[0].error
    assert files() == before


@scenario(
    "Nothing lost",
    "During a first build, a file's only mirror serves corrupted bytes",
    "`mnist-assets refresh` exits 1: that file failed with the real cause; idx, shards and checkpoint "
    "built from it are listed as blocked, naming it, and never run",
    "Everything not built from that file, built and fresh",
)
def test_a_failed_file_blocks_what_is_built_from_it_in_the_same_refresh(empty_project, http_server):
    project = empty_project
    bad_path = urlsplit(project.url + MINI_FILENAMES["test-images"]).path
    http_server.faults[bad_path] = "corrupt"
    try:
        cli = project.cli("refresh", "mini_mnist")
    finally:
        http_server.faults.pop(bad_path)

    assert cli.returncode == 1, cli.stderr
    summary = json.loads(cli.stdout)
    failed = "mini_mnist/raw_gzip[test-images]"
    assert [(s["asset"], s["partition"]) for s in summary["failed"]] == [
        ("mini_mnist/raw_gzip", "test-images")
    ]
    assert "could not fetch test-images" in summary["failed"][0]["error"]
    blocked = {(s["asset"], s["partition"]): s["blocked_by"] for s in summary["blocked"]}
    assert blocked == {
        ("mini_mnist/idx", "test-images"): [failed],
        ("mini_mnist/shards", "holdout"): [failed],
        ("mini_mnist/checkpoint", "cnn"): [failed],
        ("mini_mnist/best_model", None): [failed],  # its only candidate is blocked
    }
    assert len(summary["ran"]) == 3 + 3 + 2
    assert (
        f"BLOCKED mini_mnist/checkpoint[cnn]: not run: its input {failed} failed in this refresh"
        in cli.stderr
    )
    failed_line = next(line for line in cli.stderr.splitlines() if line.startswith(f"FAILED {failed}: "))
    assert "mini_mnist: could not fetch test-images" in failed_line
    assert "DagsterExecution" not in cli.stdout and "STEP_START" not in cli.stderr
    assert not (project.storage / "mini_mnist/idx/test-images.npy").exists()
    assert (project.storage / "mini_mnist/shards/train/_manifest.json").exists()
