"""Training losses and class weights (params section `train.loss`, `train.class_weight`).

Label convention: every loss here takes **sparse integer labels** (shape `(N,)` or
`(N, 1)`), like Keras' `SparseCategoricalCrossentropy`, and softmax probabilities
`y_pred` of shape `(N, K)`. One-hot labels are refused with a clear error.

Two focal-loss variants are offered, because the seed project's README and its code
disagree (see `shared/seed/notebook-facts.md`):

* `categorical` -- the README's formula, on the true class only:
  `FL = -alpha_t * (1 - p_t)**gamma * log(p_t)`.
* `one_vs_rest` -- what the notebook computed: for every class `c`,
  `-y_c alpha_c (1-p_c)**gamma log(p_c) - (1-y_c)(1-alpha_c) p_c**gamma log(1-p_c)`,
  with `p` clipped to `[1e-7, 1 - 1e-7]`, averaged over the classes (and, by the
  default reduction, over the batch).

Both return one value per sample, so Keras applies `sample_weight` / `class_weight`
and the reduction exactly as for its built-in losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops
from sklearn.utils.class_weight import compute_class_weight

if TYPE_CHECKING:
    from petscan.params.learning import LossParams

EPSILON = 1e-7
# the module name Keras writes into a `.keras` file for the classes below (a compiled model's
# loss and metrics): `petscan.losses` before the package split, kept so that the same model
# is the same bytes; loading finds them by their registered name ("petscan>DataLoss")
SAVED_MODULE = "petscan.losses"


def _sparse_one_hot(y_true, y_pred):
    """Integer labels `(N,)` / `(N, 1)` -> one-hot `(N, K)` in `y_pred`'s dtype."""
    num_classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape):
        if y_true.shape[-1] not in (1, None):
            raise ValueError(
                f"petscan losses take sparse integer labels of shape (N,), got y_true of shape "
                f"{tuple(y_true.shape)}: pass class indices, not one-hot rows"
            )
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    return ops.one_hot(labels, num_classes, dtype=y_pred.dtype)


def _check_alpha(alpha: Sequence[float], gamma: float) -> tuple[list[float], float]:
    alpha = [float(a) for a in alpha]
    if not alpha or any(not math.isfinite(a) or a < 0 for a in alpha):
        raise ValueError(f"focal loss alpha must be a list of finite numbers >= 0, got {alpha}")
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"focal loss gamma must be a finite number >= 0, got {gamma}")
    return alpha, gamma


class _FocalBase(keras.losses.Loss):
    def __init__(
        self,
        alpha: Sequence[float],
        gamma: float = 2.0,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha, self.gamma = _check_alpha(alpha, gamma)

    def _alpha(self, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != len(self.alpha):
            raise ValueError(
                f"{type(self).__name__} has {len(self.alpha)} alpha values but the model "
                f"outputs {y_pred.shape[-1]} classes: set params.yaml train.loss.alpha to "
                f"one value per class"
            )
        return ops.convert_to_tensor(self.alpha, dtype=y_pred.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": list(self.alpha), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="petscan")
class CategoricalFocalLoss(_FocalBase):
    """`-alpha_t (1 - p_t)**gamma log(p_t)` for the true class `t` (sparse int labels).

    With `gamma=0` and all `alpha=1` it is the sparse categorical cross-entropy.
    """

    __module__ = SAVED_MODULE

    def __init__(self, alpha, gamma=2.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(alpha, gamma, reduction, name or "categorical_focal_loss", dtype)

    def call(self, y_true, y_pred):
        one_hot = _sparse_one_hot(y_true, y_pred)
        p_t = ops.sum(one_hot * y_pred, axis=-1)
        p_t = ops.clip(p_t, EPSILON, 1.0)
        alpha_t = ops.sum(one_hot * self._alpha(y_pred), axis=-1)
        return -alpha_t * ops.power(1.0 - p_t, self.gamma) * ops.log(p_t)


@keras.saving.register_keras_serializable(package="petscan")
class OneVsRestFocalLoss(_FocalBase):
    """The notebook's per-class binary focal loss, averaged over classes (sparse int labels)."""

    __module__ = SAVED_MODULE

    def __init__(self, alpha, gamma=2.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(alpha, gamma, reduction, name or "one_vs_rest_focal_loss", dtype)
        if any(a > 1 for a in self.alpha):
            raise ValueError(
                f"one_vs_rest focal loss weighs negatives by (1 - alpha): every alpha must be "
                f"in [0, 1], got {self.alpha}"
            )

    def call(self, y_true, y_pred):
        y = _sparse_one_hot(y_true, y_pred)
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        alpha = self._alpha(y_pred)
        positive = y * alpha * ops.power(1.0 - p, self.gamma) * ops.log(p)
        negative = (1.0 - y) * (1.0 - alpha) * ops.power(p, self.gamma) * ops.log(1.0 - p)
        return -ops.mean(positive + negative, axis=-1)


def make_loss(loss: LossParams, num_classes: int) -> keras.losses.Loss:
    """The training loss described by params `train.loss`.

    `name: crossentropy` -> `SparseCategoricalCrossentropy`; `name: focal` with
    `variant: categorical | one_vs_rest`, `alpha` (one value per class in label order,
    or one number for all; null = 1 for `categorical`, 0.5 for `one_vs_rest`) and
    `gamma >= 0`. The schema has checked the values (and the alpha count against
    `data.classes`).
    """
    if loss.name == "crossentropy":
        return keras.losses.SparseCategoricalCrossentropy(name="crossentropy")
    alpha = loss.alpha
    if alpha is None:
        alpha = [1.0 if loss.variant == "categorical" else 0.5] * num_classes
    elif not isinstance(alpha, list):
        alpha = [alpha] * num_classes
    cls = CategoricalFocalLoss if loss.variant == "categorical" else OneVsRestFocalLoss
    return cls(alpha=alpha, gamma=loss.gamma)


def class_weights(
    labels: Sequence[int] | np.ndarray, mode: str | Sequence[float] | None, num_classes: int
) -> dict[int, float] | None:
    """Keras `class_weight` dict from params `train.class_weight`.

    `"balanced"`: scikit-learn's `compute_class_weight("balanced")`, `n / (k * count_c)`;
    `"none"` / None: no weighting (returns None); a list: one weight per class (the schema
    has checked that there is one positive weight a class).
    """
    if mode is None or mode == "none":
        return None
    if mode == "balanced":
        return _balanced(np.asarray(labels).ravel(), num_classes)
    return dict(enumerate(mode))


def _balanced(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    if labels.size == 0:
        raise ValueError("class_weight 'balanced' needs training labels, got none")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"class labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    counts = np.bincount(labels, minlength=num_classes)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(
            f"class_weight 'balanced' is undefined: class index(es) {missing} have no training "
            f"images; check data/split/train.csv or set train.class_weight to a list or 'none'"
        )
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return {c: float(w) for c, w in enumerate(weights)}


@keras.saving.register_keras_serializable(package="petscan")
class DataLoss(keras.metrics.Mean):
    """The training loss as a metric: the data term alone, without regularization.

    Keras' `loss` and `val_loss` add the model's penalties (the head's L2 term), so at
    a constant prediction they keep falling while the weights shrink. This metric
    averages `loss.call(y_true, y_pred)` per sample, so `val_data_loss` measures only
    how well the validation images are predicted. Given as a weighted metric it uses the
    class weights on training batches, like the loss; validation data has none.
    """

    __module__ = SAVED_MODULE

    def __init__(
        self, loss: keras.losses.Loss | dict, name: str = "data_loss", dtype: Any = None
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.loss = keras.losses.deserialize(loss) if isinstance(loss, dict) else loss
        self._direction = "down"  # lets Keras callbacks in "auto" mode minimise it

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self.loss.call(y_true, y_pred), sample_weight=sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "loss": keras.losses.serialize(self.loss)}
