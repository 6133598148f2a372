"""MNIST-format datasets as versioned, cached Dagster assets.

``defs`` (the Dagster definitions) is built on first access, not when the package imports: the command
line's ``--help`` and the loader need neither the catalog nor the definitions, and a catalog mistake
must not break them. Dagster finds ``defs`` through ``dir()`` and ``getattr`` (``-m mnist_assets``,
workspace.yaml), which reach the module-level ``__getattr__`` below.
"""

from typing import TYPE_CHECKING

# first: the warning filters (mnist_assets.quiet) are in place before the definitions load
from mnist_assets import quiet  # noqa: F401
from mnist_assets.loader import load, load_model

if TYPE_CHECKING:
    import dagster as dg

    defs: dg.Definitions

__all__ = ["defs", "load", "load_model"]


def __getattr__(name: str):
    if name == "defs":
        from mnist_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "defs"})
