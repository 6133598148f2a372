"""What every stage of the graph shares: keys, partitions, the versioned asset, blocking checks, the
sources' observers, and what the steps ask of rebuilding (:class:`Judgement`).

A stage's asset is built by :func:`versioned_asset`, whose code version hashes the code that computes it
and the blocking checks it judges (:class:`BlockingCheck`), so editing either makes the asset stale.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
import pydantic
from pydantic import Field

from mnist_assets import shards
from mnist_assets.catalog import FILE_KEYS, CatalogError, Dataset, explain
from mnist_assets.hashing import code_version
from mnist_assets.settings import DEFAULT_STORAGE
from mnist_assets.settings import STORAGE as STORAGE_VARIABLE
from mnist_assets.storage import leases

FILES = dg.StaticPartitionsDefinition(
    sorted(FILE_KEYS, key=lambda k: (k.startswith("test"), k.endswith("images")))
)
"""Labels before images: refresh builds partitions in this order, so an images partition's sample picture
can name its classes on a first build."""
SPLITS = dg.StaticPartitionsDefinition(list(shards.SPLITS))
FILES_TO_SPLITS = dg.StaticPartitionMapping(
    {
        source: [split for split, pair in shards.SPLIT_SOURCES.items() if source in pair]
        for source in FILE_KEYS
    }
)

STORAGE = f"the artifact storage ({STORAGE_VARIABLE}, default {DEFAULT_STORAGE})"
"""How descriptions name where artifacts live; each materialization's ``path`` entry gives the file."""


def asset_key(dataset: Dataset, name: str) -> dg.AssetKey:
    """The key of the dataset's asset ``name``: ``<dataset.id>/<name>``."""
    return dg.AssetKey([dataset.id, name])


@dataclasses.dataclass(frozen=True)
class Judgement:
    """What the steps ask of rebuilding, handed to the graph by whoever builds it (the assets sit below
    :mod:`mnist_assets.rebuild`, so they are given its judgement rather than importing it):
    :data:`mnist_assets.rebuild.judgement.JUDGEMENT` is the one the definitions use."""

    fresh: leases.Fresh
    """Whether a partition another process built while a step waited for its lease is fresh (reused)."""
    last_failure: Callable[[dg.DagsterInstance, dg.AssetKey, str | None], str | None]
    """The partition's last failed attempt, as one line, or None when its last attempt did not fail."""


@dataclasses.dataclass(frozen=True)
class BlockingCheck:
    """A blocking check, written once: it makes the asset's check spec and names its results, and it is
    part of the asset's code version (:func:`versioned_asset`), so adding or rewording one makes the
    asset stale."""

    name: str
    description: str

    def spec(self, asset: dg.AssetKey) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=asset, blocking=True, description=self.description)

    def result(self, passed: bool, metadata: dict[str, Any]) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(check_name=self.name, passed=passed, metadata=metadata)


def refuse_if_failed(checks: list[dg.AssetCheckResult], message: str):
    """Blocking checks judged before anything is stored: a failure records the failed checks and
    stops the step, so the last good artifact stays in place and nothing downstream runs."""
    failed = [c for c in checks if not c.passed]
    if failed:
        yield from failed
        names = ", ".join(c.check_name or "unnamed check" for c in failed)  # ours are all named
        # a check that can say what is wrong in the user's terms (a "problem" entry) leads the message
        problems = [str(c.metadata["problem"].value) for c in failed if "problem" in c.metadata]
        lead = "".join(f"{p}. " for p in problems)
        raise dg.Failure(f"{lead}{message} Failed checks: {names}.", metadata={"failed_checks": names})


def versioned_asset(fresh: leases.Fresh, uses: tuple = (), checks: tuple[BlockingCheck, ...] = (), **kwargs):
    """``dg.asset`` whose code version hashes the function's own source plus what it ``uses``
    (modules, helpers, settings dicts) and its blocking ``checks``: editing any of them makes the asset
    stale. Its step runs under the partition's lease (:func:`leases.shared_step`): work another process
    is doing is waited for and reused when ``fresh`` judges it so, not repeated; the asset's IO manager
    says where the lease lives."""

    def wrap(fn):
        store = kwargs["io_manager_key"]
        settings = {
            **kwargs,
            "required_resource_keys": {*kwargs.get("required_resource_keys", ()), store},
            "check_specs": [check.spec(kwargs["key"]) for check in checks],
        }
        version = code_version(fn, *uses, *(dataclasses.asdict(check) for check in checks))
        return dg.asset(code_version=version, **settings)(leases.shared_step(fn, store, fresh))

    return wrap


Observe = Callable[[dg.DagsterInstance, Callable[[str], None]], list[dg.AssetObservation]]
"""A source's observation: given the instance (what was recorded before) and a way to warn, its
observations now, each with its data version."""


class Observer:
    """An observable source's observation as a plain function, so observing needs no run.

    ``refresh`` and the daily schedule call :attr:`observe` and report what it returns as runless
    events (no run, no event-log database per observation); a dry run only compares it with what is
    recorded. As the source's observe function (the UI's Observe button) it logs the same
    observations in that run, so the asset page shows both alike.
    """

    def __init__(self, name: str, observe: Observe):
        self.__name__, self.observe = name, observe

    def __call__(self, context) -> dg.DataVersionsByPartition:
        for found in self.observe(context.instance, context.log.warning):
            context.log_event(found)
        return dg.DataVersionsByPartition({})  # each observation is logged above, with its metadata


def observer_of(source: object) -> Observer | None:
    """The observer behind a source asset made with one (None for any other asset)."""
    found = getattr(source, "observe_fn", None)
    return found if isinstance(found, Observer) else None


ConfigT = TypeVar("ConfigT", bound=dg.Config)


def with_defaults(
    base: type[ConfigT], overrides: dict, name: str, dataset_id: str, key: str
) -> type[ConfigT]:
    """``base`` with the catalog's per-dataset defaults (``key`` of the dataset's entry), so the launchpad
    and the code version see them."""
    unknown = sorted(set(overrides) - set(base.model_fields))
    if unknown:
        raise CatalogError(
            f"not a key here; allowed keys: {', '.join(sorted(base.model_fields))}",
            dataset_id,
            f"{key}/{unknown[0]}",
        )
    try:  # the values too, by the settings' own rules, naming the key they are written under
        base(**overrides)
    except pydantic.ValidationError as error:
        raise explain(dataset_id, error, overrides, (key,)) from None
    # Any: mypy matches ``**fields`` against every keyword of create_model (``__base__``, ``__config__``,
    # ...), so typed as the (annotation, Field) pairs they are, the call would not type-check
    fields: dict[str, Any] = {
        k: (base.model_fields[k].annotation, Field(default=v, description=base.model_fields[k].description))
        for k, v in overrides.items()
    }
    return pydantic.create_model(name, __base__=base, **fields) if fields else base
