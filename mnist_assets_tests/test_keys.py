"""A partition's label and an asset's partitions: the one way every message and walk names them."""

import dagster as dg

from mnist_assets.keys import label, partition_keys


def test_a_partition_is_labelled_as_people_write_it():
    key = dg.AssetKey(["mnist", "idx"])
    assert label(key, "train-images") == "mnist/idx[train-images]"
    assert label(key, None) == "mnist/idx"
    assert label("mnist/idx", "train-images") == label(key, "train-images")


def test_an_unpartitioned_asset_has_the_one_partition_none():
    assert partition_keys(None) == [None]
    assert partition_keys(dg.StaticPartitionsDefinition(["a", "b"])) == ["a", "b"]
