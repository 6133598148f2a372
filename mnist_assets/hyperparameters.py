"""The model's hyperparameters, written once: names, defaults, bounds and what each means.

Dagster-free and TensorFlow-free (pydantic only), so each user takes the same list: the catalog's
training configurations (:class:`mnist_assets.models.TrainConfig` adds the accuracy floor and Dagster's
config), the run config's overrides (derived from these fields, bounds kept), :mod:`mnist_assets.training`
(which reads them) and the plain baseline of ``benchmarks/plain_pipeline.py``. A new hyperparameter is a
field here plus the line of :func:`mnist_assets.training.build_model` that uses it.
"""

from __future__ import annotations

import pydantic
from pydantic import Field


class Hyperparameters(pydantic.BaseModel):
    """What a model is trained with; the bounds refuse a mistake where it is written (catalog, launchpad,
    the baseline's ``--params``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    epochs: int = Field(default=8, ge=1, description="Passes over the train split.")
    batch_size: int = Field(default=128, ge=1, description="Examples per training step.")
    learning_rate: float = Field(
        default=1e-3, gt=0, description="Adam's starting learning rate (cosine decay to zero)."
    )
    conv_filters: list[int] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        description="Filters of each 3×3 convolution block (each followed by a 2×2 pooling).",
    )
    dense_units: int = Field(default=128, ge=1, description="Units of the dense layer before the output.")
    dropout: float = Field(default=0.4, ge=0, lt=1, description="Dropout rate before the dense layer.")
    batch_norm: bool = Field(default=True, description="Batch normalisation after each convolution.")
    seed: int = Field(default=0, description="Seeds the weights and the train split's shuffle.")

    @pydantic.field_validator("conv_filters")
    @classmethod
    def _positive(cls, filters: list[int]) -> list[int]:
        if any(count < 1 for count in filters):
            raise ValueError(f"found {filters}, expected a list of positive filter counts")
        return filters
