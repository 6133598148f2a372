"""MNIST-format datasets as versioned, cached Dagster assets."""

from mnist_assets.definitions import defs

__all__ = ["defs"]
