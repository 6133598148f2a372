"""MNIST-format datasets as versioned, cached Dagster assets."""

# first: the warning filters (mnist_assets.quiet) are in place before the definitions load
from mnist_assets import quiet  # noqa: F401
from mnist_assets.definitions import defs
from mnist_assets.loader import load, load_model

__all__ = ["defs", "load", "load_model"]
