"""What a refresh did, step by step: the records :mod:`mnist_assets.rebuild.refresh` fills in and
:mod:`mnist_assets.rebuild.progress` shows while it runs (and ``mnist-assets`` prints as JSON at the end).

Their own module, below both, so the display needs nothing of the refresh that drives it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mnist_assets.keys import label


@dataclass
class Step:
    asset: str
    partition: str | None
    causes: list[str]
    seconds: float | None = None
    error: str | None = None
    blocked_by: list[str] = field(default_factory=list)
    """The partitions that failed in this refresh and that this one is built from (directly or not)."""
    last_failure: str | None = None
    """How the previous attempt ended when it failed (before this refresh), e.g. while a mirror was down."""

    @property
    def label(self) -> str:
        """``dataset/asset[partition]``, as people write it."""
        return label(self.asset, self.partition)


@dataclass
class Summary:
    datasets: list[str]
    dry_run: bool
    ran: list[Step] = field(default_factory=list)
    waiting_on_upstream: list[Step] = field(default_factory=list)
    failed: list[Step] = field(default_factory=list)
    blocked: list[Step] = field(default_factory=list)
    """Not run: an input failed in this same refresh, so running would rebuild from stale data or fail
    again with a message that hides the cause."""
    fresh: int = 0
    seconds: float = 0.0
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    catalog_errors: dict[str, str] = field(default_factory=dict)
    """The datasets asked for whose catalog entry is wrong (not refreshed), each with its one-line error."""

    def to_dict(self) -> dict:
        return asdict(self)


def failure_message(result, step_key: str) -> str:
    """A failed step's :attr:`Step.error` from its run's result: what the step raised, not a Dagster
    traceback."""
    for event in result.all_events:
        if event.step_key != step_key or not (event.is_step_failure and event.step_failure_data):
            continue
        # a dagster Failure (raised on purpose, and every StorageError): its text is the whole story
        if (on_purpose := event.step_failure_data.user_failure_data) and on_purpose.description:
            return on_purpose.description.strip()
        if error := event.step_failure_data.error:
            while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
                error = error.cause
            return error.message.strip()
    for event in result.all_events:  # no step failure: e.g. the process running the step was killed
        if event.is_run_failure and event.event_specific_data and event.event_specific_data.error:
            message = event.event_specific_data.error.message.split("\nStack Trace:")[0]
            return f"the run failed: {message.strip()}"  # the workers' tracebacks stay in the event log
    return "the run failed (see the Dagster event log)"
