"""The trained stage: model_configs (the catalog's named configurations) → checkpoint[model] (one
trained model each, kept only above its accuracy floor) → best_model (the one promoted).

TensorFlow is imported only inside :func:`train_checkpoint`, so loading the definitions does not load it.
"""

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

import mnist_assets.assets.metadata as metadata
import mnist_assets.assets.pictures as pictures
from mnist_assets import loader, model_file, models, shards
from mnist_assets.assets.common import (
    STORAGE,
    BlockingCheck,
    Judgement,
    Observer,
    asset_key,
    refuse_if_failed,
    versioned_asset,
)
from mnist_assets.catalog import Dataset
from mnist_assets.dagster_private import observation
from mnist_assets.manifest import CheckpointRecord, TrainedCheckpoint
from mnist_assets.models import TrainConfig, TrainOverrides
from mnist_assets.storage.faults import REPAIR
from mnist_assets.tags import TOLERATES_FAILED_INPUTS

if TYPE_CHECKING:
    from mnist_assets.training import TrainedModel

FLOOR_CHECK = BlockingCheck(
    "holdout_accuracy_above_floor",
    "Holdout accuracy of the trained model is at least the configuration's accuracy_floor; below it the "
    "model is not stored and the last good checkpoint stays.",
)


def train_checkpoint(dataset: Dataset, config: TrainConfig, store, log) -> "TrainedModel":
    """A model trained on the committed train shards, validated on test each epoch, evaluated on every
    split once; its record names the settings and the shard sets it was trained on."""
    from mnist_assets import training  # TensorFlow loads only when a model is trained

    with contextlib.ExitStack() as stack:
        splits = {
            split: stack.enter_context(
                loader.open_split(
                    store,
                    dataset.id,
                    split,
                    batch_size=config.batch_size,
                    # train reshuffled every epoch; test and holdout read in order
                    seed=config.seed if split == "train" else None,
                    epochs=None,
                )
            )
            for split in shards.SPLITS
        }
        model = training.train(splits, len(dataset.class_names), config, log=log)
    record = TrainedCheckpoint(
        **dict(model.record),
        config=config.model_dump(),
        shards_root_sha256={k: v.manifest.root_sha256 for k, v in splits.items()},
    )
    return dataclasses.replace(model, record=record)


def floor_check(model: "TrainedModel", config: TrainConfig) -> dg.AssetCheckResult:
    accuracy = model.record.holdout_accuracy
    return FLOOR_CHECK.result(
        accuracy >= config.accuracy_floor,
        {"holdout_accuracy": round(accuracy, metadata.PLACES["metric"]), "floor": config.accuracy_floor},
    )


def candidates(
    names: list[str], store, checkpoint_key: dg.AssetKey, last_failure: Callable[[str], str | None]
) -> tuple[dict[str, models.Entry], dict[str, str]]:
    """Each configuration's stored checkpoint record (read, not the model), or why it cannot compete;
    and each stored checkpoint's path. A configuration whose last attempt failed does not compete: its
    stored checkpoint, if any, is not of what the catalog now asks for."""
    entries: dict[str, models.Entry] = {}
    paths: dict[str, str] = {}
    for name in names:
        if failure := last_failure(name):
            entries[name] = f"not competing: {failure}"
        elif not store.exists(checkpoint_key, name):
            entries[name] = f"not competing: no checkpoint stored (materialize checkpoint[{name}])"
        else:
            location = store.location(checkpoint_key, name)
            try:
                record = CheckpointRecord.model_validate_json(location.read_bytes())
            except (ValueError, OSError) as error:
                entries[name] = f"not competing: {location} is unreadable ({error}); {REPAIR}"
                continue
            entries[name], paths[name] = record, str(location.parent / record.file)
    return entries, paths


def choose_best(
    dataset: Dataset, entries: dict[str, models.Entry], paths: dict[str, str]
) -> models.BestModelRecord:
    """The ranking, or a dg.Failure saying why there is no winner and what to do."""
    try:
        return models.rank(dataset.id, entries, paths)
    except models.NoCandidate as error:
        raise dg.Failure(
            f"{error}. The previous best_model, if any, is kept. What to do: materialize the checkpoint "
            "partitions (`mnist-assets refresh`) and fix the failures named."
        ) from None


def best_model_metadata(record: models.BestModelRecord) -> dict:
    """What best_model's materialization shows: the winner, its accuracies and the whole ranking."""
    winner = record.ranking[0]
    return {
        "winner": record.winner,
        "validation_accuracy": round(winner.validation_accuracy, metadata.PLACES["metric"]),
        "holdout_accuracy": round(winner.metrics["holdout"]["accuracy"], metadata.PLACES["metric"]),
        "checkpoint_path": dg.MetadataValue.path(record.checkpoint_file),
        "ranking": metadata.ranking_table(record),
        "chosen_by": record.chosen_by,
    }


# --- wiring: one factory per asset ---------------------------------------------------------------


def observe_model_configs(dataset: Dataset, configs: dict[str, TrainConfig]) -> list[dg.AssetObservation]:
    """Each configuration's data version, its resolved settings beside it."""
    key = asset_key(dataset, "model_configs")
    return [
        observation(
            key, name, models.config_version(config), {"config": dg.MetadataValue.json(config.model_dump())}
        )
        for name, config in configs.items()
    ]


def model_configs_asset(dataset: Dataset, configs: dict[str, TrainConfig]) -> dg.SourceAsset:
    def look(instance: dg.DagsterInstance, warn) -> list[dg.AssetObservation]:
        return observe_model_configs(dataset, configs)

    return dg.observable_source_asset(
        key=asset_key(dataset, "model_configs"),
        group_name=dataset.id,
        partitions_def=dg.StaticPartitionsDefinition(list(configs)),
        description=f"{dataset.title}: each named training configuration of the catalog entry (`models`, "
        "on top of `training`, on top of TrainConfig's defaults), resolved. A change to one makes exactly "
        "its checkpoint partition stale; a new one is a new partition, built alone.",
        metadata={"configs": dg.MetadataValue.json({n: c.model_dump() for n, c in configs.items()})},
    )(Observer("model_configs", look))


CHECKPOINT_USES = (
    # code only: each configuration's settings reach it as model_configs' data version per partition
    "mnist_assets.training",
    "mnist_assets.model_file",
    loader,
    train_checkpoint,
    floor_check,
    models.with_overrides,
    refuse_if_failed,
    metadata.checkpoint_metadata,
    metadata.history_table,
    metadata.picture,
    pictures,
)
"""What the checkpoint asset's code version hashes besides its body."""


def checkpoint_asset(
    dataset: Dataset, configs: dict[str, TrainConfig], judgement: Judgement
) -> dg.AssetsDefinition:
    key = asset_key(dataset, "checkpoint")

    @versioned_asset(
        judgement.fresh,
        uses=CHECKPOINT_USES,
        checks=(FLOOR_CHECK,),
        key=key,
        group_name=dataset.id,
        partitions_def=dg.StaticPartitionsDefinition(list(configs)),
        deps=[
            # every split, read by streaming loaders over the committed shards, not loaded whole
            dg.AssetDep(asset_key(dataset, "shards"), partition_mapping=dg.AllPartitionMapping()),
            asset_key(dataset, "model_configs"),
        ],
        io_manager_key="keras_io_manager",
        required_resource_keys={"shards_io_manager"},
        description=f"{dataset.title}: one tf.keras CNN per training configuration (the partition, a "
        "name in the catalog's `models`), trained on the train shards, validated on test each epoch, "
        "evaluated once on holdout (metrics, epoch history, training curves, holdout confusion matrix and "
        "most confident mistakes in the metadata). Stored as "
        f"`{dataset.id}/checkpoint/<model>/model-<sha256>.keras` in {STORAGE}, committed by "
        "`checkpoint.json` (metrics, config and the shard root hashes it was trained on).",
        kinds={"tensorflow", "keras"},
    )
    def checkpoint(context: dg.AssetExecutionContext, config: TrainOverrides):
        name = context.partition_key
        resolved = models.with_overrides(configs[name], config)
        model = train_checkpoint(dataset, resolved, context.resources.shards_io_manager, context.log)
        floor = floor_check(model, resolved)
        accuracy = model.record.holdout_accuracy
        yield from refuse_if_failed(
            [floor],
            f"{dataset.id}: checkpoint[{name}] reached holdout accuracy {accuracy:.4f}, below the floor "
            f"{resolved.accuracy_floor}; it was not stored and the last good checkpoint is kept. What to "
            f"do: train longer (epochs), change the settings of models/{name} in the catalog, or lower "
            "accuracy_floor in the run config.",
        )
        yield dg.Output(
            model,
            data_version=dg.DataVersion(model_file.data_version(model.keras_bytes)),
            metadata={"model": name, **metadata.checkpoint_metadata(model, dataset, name)},
        )
        yield floor

    return checkpoint


def best_model_asset(dataset: Dataset, judgement: Judgement) -> dg.AssetsDefinition:
    checkpoint_key = asset_key(dataset, "checkpoint")

    @versioned_asset(
        judgement.fresh,
        uses=("mnist_assets.models", candidates, choose_best, best_model_metadata, metadata.ranking_table),
        key=asset_key(dataset, "best_model"),
        group_name=dataset.id,
        deps=[dg.AssetDep(checkpoint_key, partition_mapping=dg.AllPartitionMapping())],
        io_manager_key="json_io_manager",
        required_resource_keys={"keras_io_manager"},
        # one configuration failing must not keep the others from being promoted
        tags={TOLERATES_FAILED_INPUTS: "true"},
        description=f"{dataset.title}: which configuration's checkpoint is promoted: the highest "
        "validation accuracy (the test split; ties: fewer parameters, then name). Holdout accuracy is "
        "reported, never used to choose. A configuration never built or whose last attempt failed is "
        f"listed as not competing, with the reason. Stored as `{dataset.id}/best_model/record.json` in "
        f'{STORAGE}; load the winner with `mnist_assets.load_model("{dataset.id}")`. Its data version '
        "changes only when the winner or its checkpoint does.",
        kinds={"json"},
    )
    def best_model(context: dg.AssetExecutionContext) -> dg.Output[models.BestModelRecord]:
        def failure_of(name: str) -> str | None:
            return judgement.last_failure(context.instance, checkpoint_key, name)

        store = context.resources.keras_io_manager
        entries, paths = candidates(dataset.model_names, store, checkpoint_key, failure_of)
        record = choose_best(dataset, entries, paths)
        return dg.Output(
            record,
            data_version=dg.DataVersion(record.data_version),
            metadata=best_model_metadata(record),
        )

    return best_model
