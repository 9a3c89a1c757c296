"""Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017).

Calibrated probabilities are `softmax(log(p) / T)`: `T > 1` softens over-confident
predictions, `T = 1` changes nothing, and the predicted class never changes. `T` is fitted
by minimizing the negative log-likelihood of held-out predictions: in this project the
out-of-fold predictions of the `cv` protocol (`training.cross_validation`), never test.
`TemperatureScale` is the same map as a saved Keras layer, so the image model carries
its temperature (`model.ensemble`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from scipy.optimize import minimize_scalar

SAVED_MODULE = "petscan.model"  # the `.keras` file's module name for custom layers
EPSILON = 1e-7  # probabilities are clipped here before the log (a softmax never gives 0)
T_BOUNDS = (0.05, 20.0)


def scale_probabilities(proba: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(p) / T)` row-wise, in float64, for probabilities `(N, K)`."""
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the integer labels `y` under `proba` (N, K)."""
    p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(len(y)), y], EPSILON, 1.0)
    return float(-np.mean(np.log(p)))


def fit_temperature(y: np.ndarray, proba: np.ndarray) -> float:
    """The `T` in `T_BOUNDS` minimizing `nll(y, scale_probabilities(proba, T))`, searched
    over log T (bounded Brent); `y` (N,) integer labels, `proba` (N, K) held-out predictions."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("temperature scaling needs at least one held-out prediction")
    result = minimize_scalar(
        lambda log_t: nll(y, scale_probabilities(proba, float(np.exp(log_t)))),
        bounds=tuple(np.log(T_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


@keras.saving.register_keras_serializable(package="petscan")
class TemperatureScale(keras.layers.Layer):
    """Probabilities `(N, K)` -> `softmax(log(p) / temperature)`; `temperature` is saved."""

    __module__ = SAVED_MODULE

    def __init__(self, temperature: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def call(self, inputs: Any) -> Any:
        p = ops.clip(ops.cast(inputs, "float32"), EPSILON, 1.0)
        return ops.softmax(ops.log(p) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
