"""The fold ensemble as one image model: one backbone pass, k heads, their mean, a temperature.

The `cv` protocol (`training.cross_validation`) trains one head per fold on the same cached
features. `ensemble_head` joins them into one features -> probabilities model: each fold's
head (a nested model named `fold_<i>`), `keras.layers.Average` of their probabilities, then
`calibration.TemperatureScale` (the temperature fitted on the out-of-fold predictions).
`build_ensemble_model` puts it under the frozen backbone like `network.build_full_model`, so
`predict`, the MLflow model, `make serve` and the app take images and return class
probabilities exactly as for a single head. Everything is built-in or registered: the file
loads with `safe_mode=True` (`saving.load_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keras

from petscan.model.calibration import TemperatureScale
from petscan.model.network import _pooled_features

if TYPE_CHECKING:
    from petscan.params.learning import ModelParams


def _fold_heads(heads: Sequence[keras.Model]) -> list[keras.Model]:
    """Each head as a model named `fold_<i>` (the same layers, so the same weights)."""
    if len(heads) < 2:
        raise ValueError(f"a fold ensemble needs at least 2 heads, got {len(heads)}")
    dims = {(int(h.input_shape[-1]), int(h.output_shape[-1])) for h in heads}
    if len(dims) != 1:
        raise ValueError(f"the fold heads disagree on (features, classes): {sorted(dims)}")
    return [keras.Model(h.input, h.output, name=f"fold_{i}") for i, h in enumerate(heads)]


def _average(x: keras.KerasTensor, heads: list[keras.Model], temperature: float):
    probabilities = [head(x) for head in heads]
    mean = keras.layers.Average(name="fold_mean")(probabilities)
    return TemperatureScale(temperature, name="temperature")(mean)


def ensemble_head(heads: Sequence[keras.Model], temperature: float = 1.0) -> keras.Model:
    """Features (D,) -> the mean of the heads' probabilities, temperature-scaled."""
    fold_heads = _fold_heads(heads)
    inputs = keras.Input(shape=(int(fold_heads[0].input_shape[-1]),), name="features")
    return keras.Model(inputs, _average(inputs, fold_heads, temperature), name="fold_ensemble")


def build_ensemble_model(
    model: ModelParams,
    heads: Sequence[keras.Model],
    weights_path: str | Path | None,
    temperature: float = 1.0,
    precision: str = "float32",
) -> keras.Model:
    """Image -> Preprocess -> backbone -> pooling -> k heads -> mean -> temperature.

    `precision`: the backbone's compute type the heads' training features were made in.
    """
    fold_heads = _fold_heads(heads)
    inputs, features = _pooled_features(model, weights_path, precision=precision)
    if int(features.shape[-1]) != int(fold_heads[0].input_shape[-1]):
        raise ValueError(
            f"the fold heads take {fold_heads[0].input_shape[-1]} features but the backbone "
            f"gives {features.shape[-1]}: retrain for this backbone (model.backbone)"
        )
    outputs = _average(features, fold_heads, temperature)
    return keras.Model(inputs, outputs, name=f"{model.backbone}_fold_ensemble")
