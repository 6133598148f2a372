"""Model configurations as data, one checkpoint partition each, and best_model's choice among them."""

import json
from collections import Counter

import dagster as dg
import pydantic
import pytest

from mnist_assets import models
from mnist_assets.catalog import CatalogError, parse_catalog
from mnist_assets.hashing import json_version
from mnist_assets.manifest import CheckpointRecord
from mnist_assets_tests.support import TINY_TRAINING, mini_catalog_document

BEST = dg.AssetKey(["mini_mnist", "best_model"])
WEAK = {"epochs": 1, "conv_filters": [2], "dense_units": 4, "accuracy_floor": 0.0}
"""Far below the mini catalog's tiny CNN on every split: it competes and loses."""


def record(test: float, holdout: float, parameters: int, seed: int = 0) -> CheckpointRecord:
    """A checkpoint record as the keras IO manager commits it."""
    return CheckpointRecord(
        file=f"model-{seed:016x}.keras",
        sha256=f"{seed:064x}",
        bytes=1000,
        metrics={"train": {"accuracy": 0.99}, "test": {"accuracy": test}, "holdout": {"accuracy": holdout}},
        epochs=3,
        training_seconds=1.0,
        parameter_count=parameters,
        config={"seed": seed},
        shards_root_sha256={},
    )


def files(*names: str) -> dict[str, str]:
    return {name: f"/storage/{name}/model.keras" for name in names}


def test_the_best_validation_accuracy_wins_even_with_the_worse_holdout():
    chosen = models.rank(
        "d",
        {
            "a": record(test=0.91, holdout=0.80, parameters=10),
            "b": record(test=0.90, holdout=0.95, parameters=5),
        },
        files("a", "b"),
    )
    assert chosen.winner == "a" and chosen.checkpoint_file == "/storage/a/model.keras"
    assert [(c.model, c.rank) for c in chosen.ranking] == [("a", 1), ("b", 2)]
    assert "never used to choose" in chosen.chosen_by
    assert chosen.ranking[1].metrics["holdout"]["accuracy"] == 0.95  # reported all the same


def test_a_tie_goes_to_fewer_parameters_then_the_name_and_says_so():
    tied = {
        "zeta": record(0.9, 0.9, parameters=100, seed=1),
        "beta": record(0.9, 0.9, parameters=500, seed=2),
        "alpha": record(0.9, 0.9, parameters=500, seed=3),
    }
    chosen = models.rank("d", tied, files(*tied))
    assert [c.model for c in chosen.ranking] == ["zeta", "alpha", "beta"]
    notes = [c.note for c in chosen.ranking]
    assert notes[0] == ""
    assert notes[1] == (
        "tied with zeta on validation accuracy 0.9000; ranked after it for more parameters (500 > 100)"
    )
    assert (
        notes[2] == "tied with alpha on validation accuracy 0.9000 and on parameters; ranked after it by name"
    )
    assert chosen.checkpoint_sha256 == tied["zeta"].sha256


def test_candidates_without_a_checkpoint_are_listed_with_the_reason_and_none_competing_fails():
    entries: dict[str, models.Entry] = {"ok": record(0.5, 0.5, 10), "broken": "not competing: it failed"}
    chosen = models.rank("d", entries, files("ok"))
    assert [(c.model, c.competing, c.rank, c.note) for c in chosen.ranking] == [
        ("ok", True, 1, ""),
        ("broken", False, None, "not competing: it failed"),
    ]
    with pytest.raises(
        models.NoCandidate, match=r"^d: no model configuration .*broken: not competing: it failed"
    ):
        models.rank("d", {"broken": "not competing: it failed"}, {})


def test_the_data_version_follows_only_the_winner_and_its_checkpoint():
    a, b = record(0.9, 0.9, 10, seed=1), record(0.8, 0.8, 10, seed=2)
    first = models.rank("d", {"a": a, "b": b}, files("a", "b"))
    loser_retrained = models.rank("d", {"a": a, "b": record(0.85, 0.99, 3, seed=4)}, files("a", "b"))
    assert first.data_version == loser_retrained.data_version
    assert first.data_version == json_version({"winner": "a", "checkpoint_sha256": a.sha256})
    winner_retrained = models.rank("d", {"a": record(0.9, 0.9, 10, seed=5), "b": b}, files("a", "b"))
    assert winner_retrained.data_version != first.data_version


def test_configurations_resolve_over_the_dataset_settings_and_refuse_unknown_keys(mini_mirror):
    document = mini_catalog_document(mini_mirror, ["http://127.0.0.1:1/"])
    dataset = parse_catalog(document)["mini_mnist"]
    assert list(models.training_configs(dataset)) == ["cnn"]  # none listed: one, the default name
    document["datasets"]["mini_mnist"]["models"] = {"small": {"dense_units": 8}, "plain": {}}
    configs = models.training_configs(parse_catalog(document)["mini_mnist"])
    assert list(configs) == ["small", "plain"]
    assert configs["small"].dense_units == 8 and configs["plain"].dense_units == TINY_TRAINING["dense_units"]
    assert configs["small"].epochs == TINY_TRAINING["epochs"] and configs["small"].learning_rate == 1e-3
    document["datasets"]["mini_mnist"]["models"]["small"] = {"dense_unit": 8}
    with pytest.raises(
        CatalogError,
        match=r"^dataset mini_mnist, key models/small/dense_unit: not a key here; allowed keys: ",
    ):
        models.training_configs(parse_catalog(document)["mini_mnist"])


def best_record(project) -> dict:
    return json.loads((project.storage / "mini_mnist/best_model/record.json").read_text())


def data_version(instance, key: dg.AssetKey) -> str:
    event = instance.get_latest_materialization_event(key)
    return event.asset_materialization.tags["dagster/data_version"]


def test_new_configurations_train_alone_and_a_failed_one_does_not_keep_the_others_from_competing(project):
    cnn = project.storage / "mini_mnist/checkpoint/cnn/checkpoint.json"
    before = cnn.read_bytes()
    project.dataset["models"] = {"cnn": {}, "weak": dict(WEAK), "doomed": {**WEAK, "accuracy_floor": 0.99}}
    summary, delta = project.refresh()
    # the existing configuration stays; each new one trains on its own; the choice runs though one failed
    assert delta == Counter({("checkpoint", "weak"): 1, ("best_model", None): 1})
    assert [(s.asset, s.partition) for s in summary.failed] == [("mini_mnist/checkpoint", "doomed")]
    assert "checkpoint[doomed] reached holdout accuracy" in summary.failed[0].error
    assert not summary.blocked and cnn.read_bytes() == before
    # the choice, due once checkpoint[weak] ran, joined the last checkpoint's run; skipped there when
    # that checkpoint failed, it ran in its own turn with the configurations that are left
    failed = project.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert [sorted(k.path[-1] for k in r.dagster_run.asset_selection or ()) for r in failed] == [
        ["best_model", "checkpoint"]
    ]
    chosen = best_record(project)
    ranking = {c["model"]: c for c in chosen["ranking"]}
    assert chosen["winner"] == "cnn" and [ranking[m]["rank"] for m in ("cnn", "weak")] == [1, 2]
    assert ranking["cnn"]["metrics"]["test"]["accuracy"] > ranking["weak"]["metrics"]["test"]["accuracy"]
    assert chosen["checkpoint_sha256"] == json.loads(before)["sha256"]
    assert not ranking["doomed"]["competing"] and ranking["doomed"]["rank"] is None
    assert (
        "last attempt failed" in ranking["doomed"]["note"] and "below the floor" in ranking["doomed"]["note"]
    )
    metadata = project.instance.get_latest_materialization_event(BEST).asset_materialization.metadata
    assert metadata["winner"].value == "cnn"
    assert [r.data["model"] for r in metadata["ranking"].records] == ["cnn", "weak", "doomed"]
    assert metadata["holdout_accuracy"].value == round(ranking["cnn"]["metrics"]["holdout"]["accuracy"], 4)
    version = data_version(project.instance, BEST)

    # the loser's settings change: only its partition is stale; the winner stands, so the version stays
    project.dataset["models"]["weak"]["learning_rate"] = 5e-4
    project.dataset["models"]["doomed"] = dict(WEAK, seed=1)
    summary, delta = project.refresh()
    assert delta == Counter({("checkpoint", "weak"): 1, ("checkpoint", "doomed"): 1, ("best_model", None): 1})
    assert [s.causes for s in summary.ran if s.partition == "weak"] == [
        ["has a new dependency data version (mini_mnist/model_configs[weak])"]
    ]
    assert best_record(project)["winner"] == "cnn" and data_version(project.instance, BEST) == version
    assert all(c["competing"] for c in best_record(project)["ranking"])
    assert project.refresh()[1] == Counter()


def test_load_model_loads_the_promoted_checkpoint_verified(project):
    from mnist_assets import load_model

    chosen = best_record(project)
    model = load_model("mini_mnist", storage=str(project.storage))
    assert model.count_params() == chosen["ranking"][0]["parameter_count"]
    assert (
        load_model("mini_mnist", "cnn", storage=str(project.storage)).count_params() == model.count_params()
    )


def test_training_returns_per_epoch_tensorboard_scalars_for_train_and_validation(project, tmp_path):
    import tensorflow as tf

    from mnist_assets.assets.checkpoints import train_checkpoint
    from mnist_assets.storage.io_managers import ShardSetIOManager

    dataset = parse_catalog(project.document)["mini_mnist"]
    config = models.TrainConfig(**{**TINY_TRAINING, "epochs": 2})
    trained = train_checkpoint(dataset, config, ShardSetIOManager(root=str(project.storage)), log=None)
    runs = {path.split("/")[0] for path in trained.logs}
    assert runs == {"train", "validation"}
    for path, data in trained.logs.items():
        assert "/events.out.tfevents." in "/" + path
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    for run, history_key in (("train", "accuracy"), ("validation", "val_accuracy")):
        (events,) = (tmp_path / run).iterdir()
        scalars = [
            (event.step, value.tag, float(tf.make_ndarray(value.tensor)))
            for raw in tf.data.TFRecordDataset(str(events))
            for event in [tf.compat.v1.Event.FromString(raw.numpy())]
            for value in event.summary.value
            if value.tag == "epoch_accuracy"
        ]
        expected = [
            (step, "epoch_accuracy", value) for step, value in enumerate(trained.history[history_key])
        ]
        assert [(s, t) for s, t, _ in scalars] == [(s, t) for s, t, _ in expected]
        assert [v for *_, v in scalars] == pytest.approx([v for *_, v in expected])


def test_the_hyperparameters_are_one_list_and_a_run_override_keeps_their_bounds():
    """TrainConfig is the hyperparameters plus the accuracy floor; the run config's overrides are the
    same fields, None by default, refusing what the configuration refuses (was: any value accepted)."""
    from mnist_assets.hyperparameters import Hyperparameters
    from mnist_assets.models import TrainConfig, TrainOverrides

    assert list(TrainConfig.model_fields) == [*Hyperparameters.model_fields, "accuracy_floor"]
    assert list(TrainOverrides.model_fields) == list(TrainConfig.model_fields)
    assert TrainOverrides().model_dump(exclude_none=True) == {}
    given = TrainOverrides(epochs=2, dropout=0.1)
    assert given.model_dump(exclude_none=True) == {"epochs": 2, "dropout": 0.1}
    for wrong in ({"epochs": 0}, {"dropout": 1.5}, {"accuracy_floor": 2}, {"conv_filters": []}):
        with pytest.raises(pydantic.ValidationError):
            TrainOverrides(**wrong)
    for name, field in Hyperparameters.model_fields.items():
        assert field.description, f"{name} has no description for the launchpad"
