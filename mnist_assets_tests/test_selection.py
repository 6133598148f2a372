"""``refresh --select``: Dagster's selection syntax within one dataset, partitions in brackets.

What a refresh then does with the selection is in test_refresh.py (real runs) and test_cli.py.
"""

from __future__ import annotations

import pytest

from mnist_assets.definitions import build_definitions
from mnist_assets.rebuild.selection import described, selected

FILES = ("train-images", "train-labels", "test-images", "test-labels")
SPLITS = ("train", "test", "holdout")


@pytest.fixture
def graph(mini_catalog, tmp_path):
    return build_definitions(mini_catalog["datasets"], str(tmp_path)).resolve_asset_graph()


def picked(graph, text: str) -> set[tuple[str, str | None]]:
    return {(key.path[-1], partition) for key, partition in selected(text, "mini_mnist", graph)}


def test_names_within_the_dataset_and_dagsters_operators(graph):
    assert picked(graph, "shards") == {("shards", s) for s in SPLITS}
    assert picked(graph, "+shards") == {
        *(("raw_gzip", f) for f in FILES),
        *(("idx", f) for f in FILES),
        *(("shards", s) for s in SPLITS),
    }  # everything up to the shards; the observed sources are not materialized, so not selected
    both = picked(graph, "shards or idx")
    assert both == picked(graph, "shards, idx") == picked(graph, 'mini_mnist/shards or key:"idx"')
    assert picked(graph, "checkpoint+") == {("checkpoint", "cnn"), ("best_model", None)}
    assert picked(graph, "key:*_gzip") == {("raw_gzip", f) for f in FILES}


def test_a_partition_in_brackets_and_what_plus_reaches_from_it(graph):
    assert picked(graph, "checkpoint[cnn]") == {("checkpoint", "cnn")}
    assert picked(graph, "+idx[test-labels]") == {("raw_gzip", "test-labels"), ("idx", "test-labels")}
    assert picked(graph, "raw_gzip[train-labels]+") == {
        ("raw_gzip", "train-labels"),
        ("idx", "train-labels"),
        ("shards", "train"),  # train and test are cut from the train files
        ("shards", "test"),
        ("checkpoint", "cnn"),
        ("best_model", None),
    }
    # an asset also named without brackets keeps every partition
    assert picked(graph, "idx or +shards[holdout]") == {
        *(("idx", f) for f in FILES),
        ("raw_gzip", "test-images"),
        ("raw_gzip", "test-labels"),
        ("shards", "holdout"),
    }
    chosen = selected("shards[test,holdout] or best_model", "mini_mnist", graph)
    assert described(chosen) == "mini_mnist/best_model, mini_mnist/shards[holdout,test]"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("shard", "--select: mini_mnist has no asset 'shard'; it has best_model, checkpoint, idx, "),
        ("+checkpoint[big]", "--select: mini_mnist/checkpoint has no partition big; its partitions: cnn"),
        (
            "best_model[x]",
            "has no partition x; its partitions: none (it is not partitioned: drop the brackets)",
        ),
        (
            "shards[]",
            "mini_mnist/shards has no partition in [] (name one); its partitions: train, test, holdout",
        ),
        (
            "*shards",
            "--select '*shards' is not a Dagster asset selection (e.g. shards, +shards, checkpoint[cnn]",
        ),
        ("urls", "--select 'urls' selects no asset of mini_mnist; it has best_model, "),
        ("key:check*[cnn]", "--select: partitions in brackets need one asset's name, not check*[cnn]"),
    ],
)
def test_a_wrong_selection_is_one_line_with_what_is_valid(graph, text, error):
    with pytest.raises(ValueError) as refused:
        selected(text, "mini_mnist", graph)
    assert error in str(refused.value) and "\n" not in str(refused.value)


def test_attributes_and_not_are_dagsters_too(graph):
    assert picked(graph, "group:mini_mnist and not checkpoint+") == picked(graph, "+shards")
