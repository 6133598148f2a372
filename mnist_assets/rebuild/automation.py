"""Refresh inside Dagster: a sensor that rebuilds what needs it, a daily schedule that observes sources.

Every materializable asset carries :func:`refresh_condition`. The automation sensor (running by
default) evaluates it in the code server, because the condition reads storage, so ``dagster dev``
rebuilds missing partitions (including those missing from the start), stale ones and deleted ones
without clicks, upstream first, one hop per tick. The ``daily_refresh`` schedule observes every
dataset's sources in its own evaluation, recorded as runless observations (no run is launched); a
changed remote file or catalog entry then makes exactly its raw partition stale and the sensor takes it
from there. A partition whose last attempt failed waits for a change or a
backoff (:mod:`mnist_assets.rebuild.attempts`), and the ``fail_dead_runs`` sensor marks failed the runs whose
process was killed, so they neither stay STARTED nor block their partitions. All are listed, with
descriptions, under Automation in the UI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from mnist_assets.assets.common import Observer, observer_of
from mnist_assets.rebuild import observing
from mnist_assets.rebuild.attempts import BackingOff, fail_dead_runs
from mnist_assets.rebuild.staleness import NeedsRebuild, Stores, stores_of
from mnist_assets.settings import DEFAULT_BACKOFF_SECONDS, DEFAULT_REFRESH_CRON
from mnist_assets.tags import OBSERVED_DAILY

__all__ = ["automation", "refresh_condition"]

SENSOR_INTERVAL_SECONDS = 30
DEAD_RUN_CHECK_SECONDS = 60


def refresh_condition(
    stores: Stores, backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
) -> dg.AutomationCondition:
    """Rebuild a partition that needs it, once per reason, after its dependencies are settled.

    A reason is: it newly needs a rebuild, an input was updated, its code changed, or its backoff after
    a failed attempt ran out. A partition whose last attempt failed is not requested while it backs off,
    unless what it is built from changed since (a new observation, an upstream rebuild, a new code
    version): one failed run per change or backoff step, not one per tick or observation. Waiting while
    any dependency needs a rebuild means a parent that reproduces identical content leaves this
    partition alone; waiting while a dependency's last attempt failed keeps that failure the only one
    reported.
    """
    AC = dg.AutomationCondition
    needs = NeedsRebuild(stores)
    backing_off = BackingOff(backoff_seconds)
    may_try = (~backing_off | AC.code_version_changed()).with_label(
        "not waiting after a failed attempt (or its code changed)"
    )
    reason = (
        (needs.newly_true() | AC.any_deps_updated() | AC.code_version_changed() | may_try.newly_true())
        .since(AC.newly_requested())
        .with_label("a new reason since it was last requested")
    )
    settled = ~(AC.any_deps_match(needs) | AC.any_deps_in_progress()).with_label(
        "a dependency needs a rebuild or is running"
    )
    # a failed dependency keeps its last good artifact and may not look stale; building on it now would
    # hide its failure behind this one, so wait until it changes (it succeeds or is rebuilt)
    upstream_ok = ~AC.any_deps_match(AC.execution_failed()).with_label(
        "waiting: a dependency's last attempt failed and it has not changed since"
    )
    return (needs & may_try & reason & settled & upstream_ok & ~AC.in_progress()).with_label(
        "rebuild when stale or missing"
    )


def automation(
    assets: Sequence[dg.AssetsDefinition | dg.SourceAsset],
    resources: Mapping[str, object],
    cron: str = DEFAULT_REFRESH_CRON,
    retry_backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
) -> dict:
    """``Definitions`` arguments: the assets with their condition, the sensors, the observe job and
    its schedule."""
    condition = refresh_condition(stores_of(assets, resources), retry_backoff_seconds)
    automated = [
        a.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition))
        if isinstance(a, dg.AssetsDefinition)
        else a
        for a in assets
    ]
    daily = [a for a in assets if isinstance(a, dg.SourceAsset) and OBSERVED_DAILY in a.tags]
    observe = dg.define_asset_job(
        "observe_sources",
        selection=dg.AssetSelection.assets(*(a.key for a in daily)),
        description="Observe every dataset's source files (HEAD or local checksum) in a run; the "
        "daily_refresh schedule does the same without one.",
    )
    return {
        "assets": automated,
        "jobs": [observe],
        "schedules": [
            dg.ScheduleDefinition(
                name="daily_refresh",
                job=observe,
                cron_schedule=cron,
                execution_fn=observe_without_a_run([o for a in daily if (o := observer_of(a))]),
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Observes the sources in its evaluation, recorded as runless observations "
                "(it launches no run); a changed file makes its raw partition stale and the "
                "refresh_stale_assets sensor rebuilds it and what is built from it.",
            )
        ],
        "sensors": [
            dg.AutomationConditionSensorDefinition(
                "refresh_stale_assets",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
                use_user_code_server=True,  # the condition reads storage, which the daemon cannot
                description="Rebuilds missing, stale and deleted asset partitions, upstream first "
                "(the same judgement as `mnist-assets refresh`); a partition whose last attempt "
                "failed waits for a change or a backoff.",
            ),
            dg.SensorDefinition(
                "fail_dead_runs",
                evaluation_fn=_fail_dead_runs,
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=DEAD_RUN_CHECK_SECONDS,
                description="Marks failed the STARTED runs whose process disappeared (killed, crashed), "
                "so they do not stay STARTED forever and their partitions are retried.",
            ),
        ],
    }


def observe_without_a_run(observers: Sequence[Observer]):
    """The daily_refresh schedule's evaluation: observe, report each observation as a runless event,
    and skip, so observing costs no run."""

    def evaluate(context: dg.ScheduleEvaluationContext) -> dg.SkipReason:
        recorded = observing.record(observers, context.instance, context.log.warning)
        return dg.SkipReason(f"recorded {recorded} source observation(s) without a run")

    return evaluate


def _fail_dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    marked = fail_dead_runs(context.instance)
    return dg.SkipReason(
        f"marked failed, their process gone: {', '.join(marked)}" if marked else "no run lost its process"
    )
