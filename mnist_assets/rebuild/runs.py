"""One Dagster run of some steps of one partition, and what became of each step.

Runs go to the definitions' executor: in this process by default, or a real run whose steps run
elsewhere (``MNIST_ASSETS_EXECUTOR=celery``); then every worker rebuilds the job by importing
:data:`DEFINITIONS_MODULE`, so only those very definitions can be run that way.
"""

from __future__ import annotations

import contextlib
import sys

import dagster as dg

from mnist_assets import quiet
from mnist_assets.dagster_private import reconstructable_asset_job
from mnist_assets.rebuild.steps import Step, failure_message
from mnist_assets.tags import HOLDER_TAG, PARTITION

DEFINITIONS_MODULE = "mnist_assets.definitions"


def _check_rebuildable(defs: dg.Definitions, executor: str) -> None:
    """Refuse definitions another executor could not rebuild. They are looked up, not imported: the
    definitions are built on top of this module, and definitions that were never loaded cannot be the
    ones passed in."""
    loaded = sys.modules.get(DEFINITIONS_MODULE)
    if getattr(loaded, "defs", None) is not defs:
        raise ValueError(
            f"the {executor} executor runs the job rebuilt from {DEFINITIONS_MODULE} in every worker; "
            "refresh those definitions (catalog and storage through MNIST_ASSETS_CATALOG and "
            "MNIST_ASSETS_STORAGE)"
        )


class Runs:
    """Launches runs of ``defs``' implicit asset job on ``instance``, tagged with the lease ``holder``
    (its steps' leases are held, and renewed, by the process that holds that token)."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict, holder: str):
        self.defs, self.instance, self.run_config = defs, instance, run_config
        self.tags = {HOLDER_TAG: holder}
        # its runs' console: the steps' messages; refresh reports each failure itself (quiet.console_logger)
        with_console = dg.Definitions.merge(defs, dg.Definitions(loggers={"console": quiet.console_logger}))
        self.job = with_console.resolve_implicit_global_asset_job_def()
        if self.job.executor_def is not dg.in_process_executor:
            _check_rebuildable(defs, self.job.executor_def.name)

    def execute(self, partition: str | None, steps: list[Step]) -> list[Step]:
        """Materialize ``steps`` (of ``partition`` or unpartitioned, upstream first) in one run; fills in
        each step's seconds, and its error when it failed or did not run."""
        keys = [dg.AssetKey.from_user_string(step.asset) for step in steps]
        with self.launch(keys, partition) as result:
            return self.outcomes(result, keys, steps)

    def launch(self, keys: list[dg.AssetKey], partition: str | None):
        """One run of ``keys[partition]`` on the definitions' executor, its result as a context manager."""
        if self.job.executor_def is dg.in_process_executor:
            return contextlib.nullcontext(
                self.job.execute_in_process(
                    run_config=self.run_config,
                    asset_selection=keys,
                    partition_key=partition,
                    instance=self.instance,
                    raise_on_error=False,
                    tags=self.tags,
                )
            )
        return dg.execute_job(
            reconstructable_asset_job(DEFINITIONS_MODULE),
            self.instance,
            run_config=self.run_config,
            tags={**self.tags, PARTITION: partition} if partition else self.tags,
            asset_selection=keys,
            raise_on_error=False,
        )

    def outcomes(self, result, keys: list[dg.AssetKey], steps: list[Step]) -> list[Step]:
        """Each step's seconds and, when it failed or did not run, its error, from a finished run."""
        stats = {s.step_key: s for s in self.instance.get_run_step_stats(result.run_id)}
        succeeded = {event.step_key for event in result.get_step_success_events()}
        failed: list[str] = []
        for key, step in zip(keys, steps, strict=True):
            step_key = self.defs.resolve_assets_def(key).node_def.name
            stat = stats.get(step_key)
            if stat and stat.start_time is not None and stat.end_time is not None:
                step.seconds = round(stat.end_time - stat.start_time, 3)
            if step_key in succeeded:
                continue
            if stat is None and failed:  # never started: an input in this run failed
                step.blocked_by = list(failed)
                step.error = f"not run: its input {', '.join(failed)} failed in this refresh"
                continue
            step.error = failure_message(result, step_key)
            failed.append(step.label)
        return steps
