"""Scheduled refresh under failure: the real sensor and schedule against a real instance, ticking on.

A partition whose last attempt failed is requested again once per change of what it is built from or
per backoff step, never once per tick or observation; a run whose process was SIGKILLed is marked
failed and retried. Time moves by passing evaluation times to the ticks, as the daemon's clock would.
"""

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import dagster as dg

from mnist_assets.catalog import FILE_KEYS
from mnist_assets.rebuild import attempts
from mnist_assets_tests.faults import scenario
from mnist_assets_tests.support import MINI_FILENAMES, REPO
from mnist_assets_tests.test_faults_crashes import kill_a_refresh_mid_checkpoint

RAW = dg.AssetKey(["mini_mnist", "raw_gzip"])


class Clock:
    """Ticks of the real sensor (with its cursor) at evaluation times the test moves forward."""

    def __init__(self, project):
        self.project, self.cursor, self.now = project, None, datetime.now(UTC)

    def tick(self, minutes: float = 1.0) -> dict[str, set]:
        self.now += timedelta(minutes=minutes)
        self.result = dg.evaluate_automation_conditions(
            defs=self.project.defs(),
            instance=self.project.instance,
            cursor=self.cursor,
            evaluation_time=self.now,
        )
        self.cursor = self.result.cursor
        graph = self.project.defs().resolve_asset_graph()
        return {
            key.path[-1]: self.result.get_requested_partitions(key)
            for key in graph.materializable_asset_keys
            if self.result.get_num_requested(key)
        }

    def observe(self) -> None:
        """The daily_refresh schedule's evaluation: it observes the sources, without a run."""
        self.project.run_daily_schedule()

    def launch(self, requested: dict[str, set]) -> list[bool]:
        """Run what the tick requested, one run per asset partition, as the sensor's runs do."""
        job = self.project.defs().resolve_implicit_global_asset_job_def()
        return [
            job.execute_in_process(
                asset_selection=[dg.AssetKey(["mini_mnist", asset])],
                partition_key=partition,
                instance=self.project.instance,
                raise_on_error=False,
            ).success
            for asset, partitions in sorted(requested.items())
            for partition in sorted(partitions, key=str)
        ]


def waiting_text(result, key: dg.AssetKey, partition: str) -> str:
    found = [r for r in result.results if r.key == key]
    texts: list[str] = []

    def walk(node):
        texts.extend(
            json.dumps(v.value) for k, v in node.serializable_evaluation.metadata.items() if k == "waiting"
        )
        for child in node.child_results:
            walk(child)

    walk(found[0])
    return " ".join(texts)


def next_retry(project, partition: str) -> float:
    """When the backoff lets the sensor retry ``raw_gzip[partition]``, from the failed runs themselves:
    300 s after the last one, doubled per failed run."""
    runs = project.instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={"dagster/partition": partition})
    )
    assert runs
    last = max(r.end_time or 0.0 for r in runs)
    return last + attempts.DEFAULT_BACKOFF_SECONDS * 2 ** (len(runs) - 1)


@scenario(
    "Network",
    "Every mirror unreachable while the schedule observes every minute and the sensor ticks on "
    "(the retry storm of issue 15)",
    "One failed run per partition per backoff step (5, 10, 20 … min, up to a day), not one per tick; the "
    'sensor\'s evaluation says "waiting: last attempt failed at …, retry after … or on change"; when the '
    "mirror answers again, the next tick requests the failed partitions at once",
    "Nothing is written; the failed runs are the only record",
)
def test_an_unreachable_mirror_is_retried_per_backoff_step_and_at_once_when_it_answers(empty_project):
    project = empty_project
    away = project.mirror.rename(project.mirror.with_name("mirror-away"))
    clock = Clock(project)
    launched = []  # the ticks that requested the failed partitions again
    for minute in range(40):
        clock.observe()  # no mirror answers: the pinned (then the previous) version, nothing changes
        due = minute == 0 or (clock.now + timedelta(minutes=1)).timestamp() >= next_retry(
            project, "test-images"
        )
        requested = clock.tick()
        assert requested == ({"raw_gzip": set(FILE_KEYS)} if due else {}), (minute, requested)
        if requested:
            assert not any(clock.launch(requested))
            launched.append(minute)
    # 40 ticks and observations, 4 attempts per partition: the first, then after 5, 10 and 20 minutes
    assert len(launched) == 4, launched

    text = waiting_text(clock.result, RAW, "test-images")
    assert "waiting: last attempt failed at" in text and "4 failed attempts in a row" in text
    assert "retry after" in text and "or on change" in text and "HTTP 404" in text, text

    away.rename(project.mirror)  # the mirror is back, long before the next backoff step ends
    assert clock.tick(minutes=0) == {}  # nobody has looked yet
    assert clock.now.timestamp() < next_retry(project, "test-images")
    clock.observe()
    assert clock.tick(minutes=0) == {"raw_gzip": set(FILE_KEYS)}
    assert all(clock.launch({"raw_gzip": set(FILE_KEYS)}))


def test_observations_that_answer_the_same_are_not_a_change(project, http_server):
    """A mirror that answers HEAD but serves damaged bytes: each observation repeats the data version the
    failed attempt already had, so only the backoff brings the next attempt."""
    path = project.mirror / MINI_FILENAMES["test-images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=777))
    http_server.faults[urlsplit(project.url + MINI_FILENAMES["test-images"]).path] = "corrupt"
    clock = Clock(project)
    launched = []
    for minute in range(12):
        clock.observe()  # answers, with the data version the failed attempt started from
        due = minute == 0 or (clock.now + timedelta(minutes=1)).timestamp() >= next_retry(
            project, "test-images"
        )
        requested = clock.tick()
        assert requested == ({"raw_gzip": {"test-images"}} if due else {}), (minute, requested)
        if requested:
            assert clock.launch(requested) == [False]
            launched.append(minute)
    assert len(launched) == 3, (
        launched
    )  # 12 observations and ticks: the first attempt, then after 5 and 10 minutes
    assert clock.now.timestamp() < next_retry(project, "test-images")


def test_a_failed_partition_is_retried_at_once_when_its_settings_change(project):
    clock = Clock(project)
    project.dataset["training"]["conv_filters"] = [4] * 5  # too deep for 28×28: Keras refuses it
    project.observe()  # model_configs, as refresh or Observe in the UI does
    assert clock.tick() == {"checkpoint": {"cnn"}}
    assert clock.launch({"checkpoint": {"cnn"}}) == [False]
    assert clock.tick() == {}  # backing off
    project.dataset["training"]["conv_filters"] = [4, 8]  # fixed: a new observation since the failed attempt
    project.observe()
    assert clock.tick(minutes=0) == {"checkpoint": {"cnn"}}


def test_refresh_tries_a_backing_off_partition_on_demand_and_names_its_last_failure(empty_project):
    project = empty_project
    away = project.mirror.rename(project.mirror.with_name("mirror-away"))
    clock = Clock(project)
    assert not any(clock.launch(clock.tick()))
    summary, _ = project.refresh()
    assert len(summary.failed) == len(FILE_KEYS)  # a person asked: it tried, though the sensor waits
    step = next(s for s in summary.ran + summary.failed if s.partition == "test-images")
    assert step.last_failure and step.last_failure.startswith("last attempt failed at"), step
    assert "HTTP 404" in step.last_failure
    away.rename(project.mirror)


@scenario(
    "Crashes and concurrency",
    "SIGKILL of a `mnist-assets refresh` process mid-run: its run would stay STARTED forever",
    "The fail_dead_runs sensor (and the next refresh) marks the run FAILURE, saying its process "
    "disappeared; the next automation tick requests the killed partition again",
    "The last good checkpoint",
)
def test_a_sigkilled_run_is_marked_failed_and_its_partition_retried_by_the_next_tick(project):
    directory = project.storage / "mini_mnist/checkpoint/cnn"
    good = (directory / "checkpoint.json").read_bytes()
    clock = Clock(project)
    assert clock.tick() == {}
    run_id = kill_a_refresh_mid_checkpoint(project)
    assert clock.tick() == {}  # it is still "in progress" as far as Dagster knows

    sensor = project.defs().resolve_sensor_def("fail_dead_runs")
    skip = sensor(dg.build_sensor_context(instance=project.instance))
    assert run_id in str(skip)

    record = project.instance.get_run_record_by_id(run_id)
    assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    failure = attempts.last_failure(project.instance, dg.AssetKey(["mini_mnist", "checkpoint"]), "cnn")
    assert failure is not None and failure.process_gone and "disappeared" in failure.message
    assert (directory / "checkpoint.json").read_bytes() == good
    assert clock.tick() == {"checkpoint": {"cnn"}}  # a vanished process is retried at once, the first time
    assert all(clock.launch({"checkpoint": {"cnn"}}))
    assert clock.tick() == {"best_model": {None}}  # its candidate was retrained
    assert all(clock.launch({"best_model": {None}}))
    assert clock.tick() == {}


def test_the_next_refresh_marks_a_sigkilled_run_failed_and_retries_its_partition(project):
    run_id = kill_a_refresh_mid_checkpoint(project)
    summary, delta = project.refresh()
    record = project.instance.get_run_record_by_id(run_id)
    assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    assert [(s.asset, s.error) for s in summary.ran] == [
        ("mini_mnist/checkpoint", None),
        ("mini_mnist/best_model", None),
    ]
    assert summary.ran[0].last_failure and "disappeared" in summary.ran[0].last_failure
    assert delta == {("checkpoint", "cnn"): 1, ("best_model", None): 1}


def test_the_retry_backoff_comes_from_the_environment(mini_catalog):
    code = (
        "from mnist_assets import defs\n"
        "from mnist_assets.rebuild.attempts import BackingOff\n"
        "def walk(c):\n"
        "    return [c] if isinstance(c, BackingOff) else [b for child in c.children for b in walk(child)]\n"
        "spec = next(s for s in defs.resolve_all_asset_specs() if s.automation_condition)\n"
        "print({b.backoff_seconds for b in walk(spec.automation_condition)})\n"
    )
    env = {
        **os.environ,
        "MNIST_ASSETS_CATALOG": str(mini_catalog["path"]),
        "MNIST_ASSETS_RETRY_BACKOFF": "7.5",
    }
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{7.5}"
    env["MNIST_ASSETS_RETRY_BACKOFF"] = "soon"
    out = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert (
        out.returncode != 0 and "MNIST_ASSETS_RETRY_BACKOFF='soon': set it to a positive number" in out.stderr
    )
