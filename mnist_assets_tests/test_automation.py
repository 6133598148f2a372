"""The automation sensor, the daily schedule and the UI's stale markers, against the refresh plan.

Each tick (Dagster's testing API) must request exactly the partitions that need a rebuild, and they,
like the partitions the webserver's GraphQL marks stale, must be the ones `mnist-assets refresh
--dry-run` would run first: one judgement behind the CLI, the sensor and the UI.
"""

import gzip
import json
from urllib.parse import urlsplit

import dagster as dg

from mnist_assets.catalog import FILE_KEYS
from mnist_assets_tests.support import MINI_FILENAMES


class Ticks:
    """Successive evaluations of the sensor's conditions, carrying the cursor as the daemon does."""

    def __init__(self, project):
        self.project, self.cursor = project, None

    def next(self) -> dict[str, set]:
        result = dg.evaluate_automation_conditions(
            defs=self.project.defs(), instance=self.project.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        graph = self.project.defs().resolve_asset_graph()
        return {
            key.path[-1]: result.get_requested_partitions(key)
            for key in graph.materializable_asset_keys
            if result.get_num_requested(key)
        }


def first_hop_of_plan(project) -> dict[str, set]:
    """What a dry-run refresh would run now, without the partitions waiting on an upstream rebuild."""
    summary, _ = project.refresh(dry_run=True)
    plan: dict[str, set] = {}
    for step in summary.ran:
        plan.setdefault(step.asset.split("/")[-1], set()).add(step.partition)
    return plan


def materialize(project, asset: str, partitions) -> None:
    job = project.defs().resolve_implicit_global_asset_job_def()
    for partition in partitions:
        job.execute_in_process(
            asset_selection=[dg.AssetKey(["mini_mnist", asset])],
            partition_key=partition,
            instance=project.instance,
        )


def test_assets_missing_from_the_start_are_built_upstream_first(empty_project):
    ticks = Ticks(empty_project)
    assert ticks.next() == {"raw_gzip": set(FILE_KEYS)}
    assert ticks.next() == {}  # requested once, not again while its run is pending
    materialize(empty_project, "raw_gzip", FILE_KEYS)
    assert ticks.next() == {"idx": set(FILE_KEYS)}


def test_a_built_project_requests_nothing(project):
    ticks = Ticks(project)
    assert ticks.next() == {}
    assert first_hop_of_plan(project) == {}


def test_a_changed_remote_file_observed_by_the_schedule_requests_exactly_its_raw_partition(project):
    defs = project.defs()
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert (
        schedule.job_name == "observe_sources" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    )
    ticks = Ticks(project)
    assert ticks.next() == {}
    path = project.mirror / MINI_FILENAMES["test-images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=777))
    assert ticks.next() == {}  # nobody has looked at the mirror yet
    runs = len(project.instance.get_runs())
    assert "without a run" in project.run_daily_schedule()
    assert len(project.instance.get_runs()) == runs
    assert ticks.next() == {"raw_gzip": {"test-images"}} == first_hop_of_plan(project)
    materialize(project, "raw_gzip", ["test-images"])
    assert ticks.next() == {}  # the same payload came back: nothing downstream is stale


def test_a_deleted_artifact_is_requested_alone(project):
    ticks = Ticks(project)
    ticks.next()
    (project.storage / "mini_mnist/shards/holdout/_manifest.json").unlink()
    assert ticks.next() == {"shards": {"holdout"}} == first_hop_of_plan(project)


def test_a_training_setting_change_requests_only_the_checkpoint_once_observed(project):
    """The settings reach the checkpoint as the model_configs source's data versions: seen once it is
    observed (the daily_refresh schedule, `mnist-assets refresh`, or Observe in the UI)."""
    ticks = Ticks(project)
    ticks.next()
    project.dataset["training"]["epochs"] = 2
    plan = first_hop_of_plan(project)  # a dry run observes the sources in process, recording nothing
    assert plan == {"checkpoint": {"cnn"}} and ticks.next() == {}
    project.observe()  # as the refresh itself does first
    assert ticks.next() == plan


def labels_true_for(result: dg.AutomationResult, partition: str) -> set[str]:
    """The labels of every condition in the evaluation tree that holds for ``partition``."""
    found = set()
    if result.condition.get_label() and partition in result.true_subset.expensively_compute_partition_keys():
        found.add(result.condition.get_label())
    for child in result.child_results:
        found |= labels_true_for(child, partition)
    return found


def test_a_dependency_whose_last_attempt_failed_blocks_its_dependents_until_it_changes(project, http_server):
    ticks = Ticks(project)
    assert ticks.next() == {}
    bad_path = urlsplit(project.url + MINI_FILENAMES["test-images"]).path
    http_server.faults[bad_path] = "corrupt"
    try:  # someone reruns the raw file while its mirror serves damaged bytes: the run fails
        job = project.defs().resolve_implicit_global_asset_job_def()
        raw = dg.AssetKey(["mini_mnist", "raw_gzip"])
        failed = job.execute_in_process(
            asset_selection=[raw],
            partition_key="test-images",
            instance=project.instance,
            raise_on_error=False,
        )
        assert not failed.success
    finally:
        http_server.faults.pop(bad_path)
    (project.storage / "mini_mnist/idx/test-images.npy").unlink()  # idx[test-images] now needs a rebuild

    assert ticks.next() == {}
    result = dg.evaluate_automation_conditions(defs=project.defs(), instance=project.instance)
    idx_result = next(r for r in result.results if r.key == dg.AssetKey(["mini_mnist", "idx"]))
    assert "waiting: a dependency's last attempt failed and it has not changed since" in labels_true_for(
        idx_result, "test-images"
    )

    materialize(project, "raw_gzip", ["test-images"])  # the mirror is good again and the file succeeds
    assert ticks.next() == {"idx": {"test-images"}}


UI_NODES = "{ assetNodes { assetKey { path } isPartitioned staleStatus } }"
UI_PARTITIONS = """query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys staleStatusByPartition } }
}"""


def test_the_ui_marks_stale_exactly_what_refresh_plans_to_run(project, tmp_path, monkeypatch):
    """The webserver's GraphQL (what the UI draws), against a code server started like `dagster dev`'s."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    import mnist_assets.definitions

    project.dataset["training"]["epochs"] = 2
    path = project.mirror / MINI_FILENAMES["test-images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=777))
    plan = first_hop_of_plan(project)  # a dry run sees the mirror as it is now, recording nothing
    assert plan == {"raw_gzip": {"test-images"}, "checkpoint": {"cnn"}}
    project.observe()  # what the UI reads

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(project.document))
    monkeypatch.setenv("MNIST_ASSETS_CATALOG", str(catalog))
    monkeypatch.setenv("MNIST_ASSETS_STORAGE", str(project.storage))
    marked: dict[str, set] = {}
    with define_out_of_process_context(
        mnist_assets.definitions.__file__, "defs", project.instance
    ) as context:
        for node in execute_dagster_graphql(context, UI_NODES).data["assetNodes"]:
            path = node["assetKey"]["path"]
            if path[-1] in ("urls", "model_configs"):  # observed sources: nothing to rebuild
                continue
            statuses = [(None, node["staleStatus"])]
            if node["isPartitioned"]:
                found = execute_dagster_graphql(context, UI_PARTITIONS, {"key": {"path": path}})
                partitioned = found.data["assetNodeOrError"]
                statuses = zip(
                    partitioned["partitionKeys"], partitioned["staleStatusByPartition"], strict=True
                )
            for partition, status in statuses:
                if status != "FRESH":
                    marked.setdefault(path[-1], set()).add(partition)
    assert marked == plan
