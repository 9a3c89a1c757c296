"""Training the classifier: the `train` stage's library (params section `train`).

Two modes share one recipe (the seed notebook's: Adam, piecewise learning rate,
early stopping with the best weights restored, class weights and a focal loss on
integer labels). Early stopping, the plateau schedule and the best epoch watch
`train.early_stopping.monitor`, by default `val_roc_auc_macro` (macro one-vs-rest
ROC AUC on val, recorded every epoch) or `val_data_loss`, the validation loss
without the head's L2 penalty; never Keras' `val_loss` unless asked for: it includes
the penalty, and at a constant prediction it keeps falling while the weights shrink.
After training, `check_collapse` raises the alarm when the head predicts one class for
(nearly) every validation image or never beats the class prior.

* `cached` trains only the dense head on the backbone features that `featurize`
  cached. Every epoch sees every training image exactly once, as one of its cached
  views picked at random (seeded per epoch), so the cached augmentation is used the
  way on-line augmentation would be. Validation uses the plain view (view 0).
* `end_to_end` trains from the image files, with the augmenter on-line, through the
  backbone (its top `train.unfreeze_top_layers` layers trainable, BatchNorm frozen),
  under `tf.distribute.MirroredStrategy` when several GPUs are visible.

Both return a `TrainResult`; `save_outputs` writes `model.keras` (the whole
image-to-probability model), `history.csv` and `train.json` atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from petscan.data.features import FeatureSet, load_features
from petscan.data.tf_data import build_augmenter, image_dataset
from petscan.evaluation import metrics
from petscan.handoff.manifests import manifest_paths
from petscan.handoff.records import (
    HISTORY_COLUMNS,
    FeatureMeta,
    TrainInfo,
    WeightsInfo,
    read_weights_info,
    weights_file,
    write_train_info,
)
from petscan.model import losses, schedules
from petscan.model import network as pmodel
from petscan.model.backbones import backbone_spec
from petscan.params import loading as config
from petscan.tracking import runs as tracking
from petscan.utils import io
from petscan.utils.redact import redact_text

log = logging.getLogger(__name__)

MONITORS = ("val_data_loss", "val_loss", "val_accuracy", "val_roc_auc_macro")
VALIDATION_BATCH = 32  # Keras' batch for validation arrays: val_loss is a mean over batches


# --------------------------------------------------------------------------- determinism
def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic.

    Same params on the same machine then give the same weights and metrics.
    """
    keras.utils.set_random_seed(int(seed))
    with contextlib.suppress(RuntimeError):  # already enabled in this process
        tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------- cached sampler
class CachedViewSampler(keras.utils.PyDataset):
    """Batches of cached features: each epoch, every image once, in one random view.

    `features` has shape (N, V, D). Batch `i` belongs to epoch `i // steps_per_epoch`;
    the epoch's image order and view choice come from `numpy.random.default_rng((seed,
    epoch))`, so a batch depends only on its index, not on the order in which Keras
    calls the epoch hooks. The dataset spans all `epochs` epochs: pass
    `steps_per_epoch=sampler.steps_per_epoch` and `shuffle=False` to `fit`.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        epochs: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if features.ndim != 3:
            raise ValueError(f"cached features must have shape (N, V, D), got {features.shape}")
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        if len(features) == 0:
            raise ValueError("no training features: data/features/train.npy is empty")
        self.features = features
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.shuffle = shuffle
        self._plan_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    @property
    def num_batches(self) -> int:
        return self.steps_per_epoch * self.epochs

    def __len__(self) -> int:
        return self.num_batches

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(image order, view per image) of one epoch; `views[i]` is image i's view."""
        if epoch not in self._plan_cache:
            rng = np.random.default_rng((self.seed, int(epoch)))
            n, views = self.features.shape[:2]
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._plan_cache = {epoch: (order, rng.integers(0, views, size=n))}
        return self._plan_cache[epoch]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        epoch, step = divmod(int(index), self.steps_per_epoch)
        order, views = self.plan(epoch)
        rows = order[step * self.batch_size : (step + 1) * self.batch_size]
        return self.features[rows, views[rows]], self.labels[rows]

    def dataset(self) -> tf.data.Dataset:
        """The same batches, in the same order, as a `tf.data.Dataset`.

        `fit` on a `PyDataset` calls back into Python for every batch and builds a slow
        iterator per fit; here every epoch's rows are planned up front and gathered
        inside TensorFlow from one copy of the features.
        """
        n, views, dim = self.features.shape
        plans = [self.plan(epoch) for epoch in range(self.epochs)]
        rows = np.stack([order * views + chosen[order] for order, chosen in plans])
        labels = np.stack([self.labels[order] for order, _ in plans])
        table = tf.constant(self.features.reshape(n * views, dim))
        batch = self.batch_size
        epochs = tf.data.Dataset.from_tensor_slices((rows, labels))
        batches = epochs.flat_map(
            lambda r, y: tf.data.Dataset.from_tensor_slices((r, y)).batch(batch)
        )
        return _unthreaded(batches.map(lambda r, y: (tf.gather(table, r), y)))


def _unthreaded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning and injected prefetch: the same elements,
    and no background threads, whose shutdown held up the end of `fit` by up to 4.7 s."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


# --------------------------------------------------------------------------- fused Adam
XLA_NO_FMA_FLAG = "--xla_cpu_max_isa=AVX"  # AVX has no fused multiply-add instruction


@tf.function(jit_compile=True, autograph=False)
def _adam_kernel(gradient, variable, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """Keras' Adam update of one variable, the same float32 operations in the same order,
    compiled by XLA into one pass over memory instead of about twelve. `variable`, `m`
    and `v` are resource handles, so one trace serves every model of the same shapes."""

    def read(handle):
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=gradient.dtype)

    m_new = read(m) + (gradient - read(m)) * one_minus_beta_1
    v_new = read(v) + (tf.square(gradient) - read(v)) * one_minus_beta_2
    step = (m_new * alpha) / (tf.sqrt(v_new) + epsilon)
    tf.raw_ops.AssignVariableOp(resource=m, value=m_new)
    tf.raw_ops.AssignVariableOp(resource=v, value=v_new)
    tf.raw_ops.AssignSubVariableOp(resource=variable, value=step)


def _handle(variable: Any) -> tf.Tensor:
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@functools.cache
def exact_xla_available() -> bool:
    """Whether `_adam_kernel` reproduces TensorFlow's separate operations bit for bit here.

    XLA's CPU code generator contracts a multiply and the add after it into one FMA
    instruction (one rounding instead of two), which would move every update by up to an
    ulp. Capping its instruction set at AVX before the process's first XLA compilation
    prevents that (XLA_FLAGS, unless it already sets `xla_cpu_max_isa`); this then checks
    it on random numbers, where an FMA shows. False on GPUs, or when the check fails
    (XLA set up earlier in the process): `FusedAdam` then runs Keras' own update.
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_max_isa" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_NO_FMA_FLAG}".strip()
    rng = np.random.default_rng(0)
    grad, var, m, v = rng.normal(size=(4, 4099))
    v = v**2  # a velocity is a mean of squares
    constants = [np.float32(c) for c in (0.37, 1 - 0.9, 1 - 0.999, 1e-7)]
    fused = [tf.Variable(x, dtype=tf.float32) for x in (var, m, v)]
    grad = tf.constant(grad, tf.float32)
    try:
        _adam_kernel(grad, *(x.handle for x in fused), *constants)
    except (tf.errors.OpError, ValueError) as err:  # no XLA in this TensorFlow build
        log.info("fused Adam unavailable (%s): using Keras' Adam", err)
        return False
    var, m, v = (tf.constant(x, tf.float32) for x in (var, m, v))
    alpha, c1, c2, eps = constants
    m = m + (grad - m) * c1
    v = v + (tf.square(grad) - v) * c2
    var = var - (m * alpha) / (tf.sqrt(v) + eps)
    same = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fused, (var, m, v), strict=True)
    )
    if not same:
        log.info("XLA's Adam update differs from TensorFlow's here: using Keras' Adam")
    return same


@keras.saving.register_keras_serializable(package="petscan")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, bit for bit, with each variable's update run as one XLA kernel.

    Keras runs Adam as about twelve separate element-wise operations per variable, each
    a pass over memory; for the head's 1536 x 1024 kernel they took more time than the
    forward and backward passes together (2 CPU cores; README, "Measured"). `_adam_kernel`
    does the same float32 arithmetic in one pass (`exact_xla_available` checks that it
    is the same); AMSGrad runs Keras' update.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = keras.ops.cast(learning_rate, dtype)
        gradient = keras.ops.cast(gradient, dtype)
        local_step = keras.ops.cast(self.iterations + 1, dtype)
        beta_1_power = keras.ops.power(keras.ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = keras.ops.power(keras.ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * keras.ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        index = self._get_variable_index(variable)
        _adam_kernel(
            gradient,
            _handle(variable),
            _handle(self._momentums[index]),
            _handle(self._velocities[index]),
            alpha,
            tf.constant(1 - self.beta_1, dtype),
            tf.constant(1 - self.beta_2, dtype),
            tf.constant(self.epsilon, dtype),
        )
        return None


# --------------------------------------------------------------------------- recipe pieces
def make_optimizer(
    optimizer_params: dict[str, Any], learning_rate: float, fused: bool = False
) -> keras.Optimizer:
    """`{name: adam, ...}` -> a Keras optimizer; extra keys go to its constructor.

    With `fused`, Adam becomes `FusedAdam` (the same numbers, faster) where XLA computes
    them exactly (`exact_xla_available`).
    """
    settings = dict(optimizer_params)
    name = settings.pop("name")
    settings.pop("learning_rate", None)  # the schedule owns the learning rate
    try:
        optimizer = keras.optimizers.get(
            {"class_name": name, "config": {"learning_rate": learning_rate, **settings}}
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"params.yaml train.optimizer: cannot build {name!r}: {err}") from err
    if fused and type(optimizer) is keras.optimizers.Adam and exact_xla_available():
        return FusedAdam.from_config(optimizer.get_config())
    return optimizer


def monitor_mode(monitor: str) -> str:
    """ "min" for a loss, "max" for a score; unknown names are a clear error."""
    if monitor not in MONITORS:
        raise ValueError(
            f"params.yaml: cannot monitor {monitor!r}; choose one of {', '.join(MONITORS)}"
        )
    return "min" if monitor.endswith("loss") else "max"


class ValidationAUC(keras.callbacks.Callback):
    """Adds `val_roc_auc_macro` to every epoch's logs: macro one-vs-rest ROC AUC on val.

    `x` is an array of features (predicted in one call) or a dataset of images. The
    value is NaN when a class is missing from `y`. Put it before the callbacks that
    read it (early stopping, the plateau schedule).
    """

    def __init__(self, x: Any, y: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.x = np.ascontiguousarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x
        self.y = np.asarray(y, dtype=np.int64)
        self.num_classes = int(num_classes)

    def probabilities(self) -> np.ndarray:
        if isinstance(self.x, np.ndarray):
            return keras.ops.convert_to_numpy(self.model(self.x, training=False))
        return self.model.predict(self.x, verbose=0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if len(np.unique(self.y)) < self.num_classes:
            logs["val_roc_auc_macro"] = math.nan
            return
        proba = np.asarray(self.probabilities(), dtype=np.float64)
        finite = np.all(np.isfinite(proba))
        logs["val_roc_auc_macro"] = (
            float(np.mean(metrics.roc_auc_per_class(self.y, proba))) if finite else math.nan
        )


class PlateauScaledSchedule(keras.callbacks.Callback):
    """The piecewise schedule, times a factor that shrinks when `monitor` plateaus.

    Keras' `ReduceLROnPlateau` and `LearningRateScheduler` overwrite each other's
    learning rate; this callback combines them: lr(epoch) = piecewise(epoch) * scale,
    where `scale` is multiplied by `factor` after `patience` epochs without improvement,
    and the result never goes below `min_lr`.
    """

    def __init__(self, schedule_params: dict, plateau_params: dict) -> None:
        super().__init__()
        self.boundaries = list(schedule_params["boundaries"])
        self.values = list(schedule_params["values"])
        schedules.check_piecewise(self.boundaries, self.values)
        self.monitor = plateau_params["monitor"]
        self.factor = float(plateau_params["factor"])
        self.patience = int(plateau_params["patience"])
        self.min_lr = float(plateau_params["min_lr"])
        self.sign = 1.0 if monitor_mode(self.monitor) == "min" else -1.0
        self.scale, self.best, self.wait = 1.0, math.inf, 0

    def _lr(self, epoch: int) -> float:
        base = schedules.piecewise_lr(epoch, self.boundaries, self.values)
        return max(base * self.scale, self.min_lr)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate = self._lr(epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        current = logs.get(self.monitor)
        if current is None or not math.isfinite(current):
            return
        if self.sign * current < self.best:
            self.best, self.wait = self.sign * float(current), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.scale *= self.factor
            self.wait = 0


def build_callbacks(
    train_params: dict[str, Any],
    validation: ValidationAUC | None = None,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> tuple[list[keras.callbacks.Callback], keras.callbacks.EarlyStopping | None]:
    """Validation AUC, learning-rate schedule, early stopping, then `extra`.

    The order matters: Keras calls the callbacks in list order with one logs dict, so
    `val_roc_auc_macro` is in the logs before early stopping reads it, and loggers in
    `extra` see the final logs.
    """
    callbacks: list[keras.callbacks.Callback] = [validation] if validation else []
    plateau = train_params["reduce_lr_on_plateau"]
    if plateau["enabled"]:
        callbacks.append(PlateauScaledSchedule(train_params["lr_schedule"], plateau))
    else:
        callbacks.append(schedules.lr_scheduler(train_params["lr_schedule"]))
    stopping = None
    es = train_params["early_stopping"]
    if es["enabled"]:
        stopping = keras.callbacks.EarlyStopping(
            monitor=es["monitor"],
            mode=monitor_mode(es["monitor"]),
            patience=int(es["patience"]),
            restore_best_weights=bool(es["restore_best_weights"]),
            min_delta=float(es["min_delta"]),
            verbose=0,
        )
        callbacks.append(stopping)
    return callbacks + list(extra), stopping


def compile_model(
    model: keras.Model,
    train_params: dict[str, Any],
    num_classes: int,
    steps_per_execution: int = 1,
    fused_adam: bool = False,
) -> None:
    """Adam (or `train.optimizer`), `losses.make_loss(train.loss)`, sparse accuracy and
    the loss without regularization (`data_loss`, class-weighted like the loss).

    `steps_per_execution` runs that many batches per call into TensorFlow; it must
    divide the steps of an epoch so that epoch-level callbacks still fire on time.
    `fused_adam`: see `make_optimizer`.
    """
    first_lr = float(train_params["lr_schedule"]["values"][0])
    loss = losses.make_loss(train_params["loss"], num_classes)
    optimizer = make_optimizer(train_params["optimizer"], first_lr, fused=fused_adam)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        weighted_metrics=[losses.DataLoss(loss)],
        steps_per_execution=steps_per_execution,
    )


def distribution_strategy() -> tf.distribute.Strategy:
    """`MirroredStrategy` over all GPUs when there are several, else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


# --------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """A finished training: `model` maps images to probabilities; `head` maps features."""

    model: keras.Model
    head: keras.Model | None
    history: pd.DataFrame
    best_epoch: int  # 0-based, as in history.csv; the weights kept are this epoch's
    epochs_run: int
    stopped_early: bool
    info: dict[str, Any] = field(default_factory=dict)

    def best_values(self) -> dict[str, float]:
        """history.csv's row at `best_epoch`: {column: value}, without the epoch."""
        best = self.history[self.history["epoch"] == self.best_epoch]
        row = best.iloc[0].to_dict() if len(best) else {}
        return {k: float(v) for k, v in row.items() if k != "epoch"}


def history_frame(
    history: keras.callbacks.History, lr_schedule: dict | None = None
) -> pd.DataFrame:
    """Keras history -> DataFrame with `HISTORY_COLUMNS` (epoch 0-based)."""
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", list(history.epoch))
    if "learning_rate" not in frame and lr_schedule is not None:
        frame["learning_rate"] = [
            schedules.piecewise_lr(e, lr_schedule["boundaries"], lr_schedule["values"])
            for e in frame["epoch"]
        ]
    columns = [c for c in HISTORY_COLUMNS if c in frame] + [
        c for c in frame if c not in HISTORY_COLUMNS
    ]
    return frame[columns]


def _best_epoch(
    frame: pd.DataFrame, stopping: keras.callbacks.EarlyStopping | None
) -> tuple[int, bool]:
    """(epoch whose weights the model holds, whether early stopping fired)."""
    last = int(frame["epoch"].iloc[-1])
    if stopping is None or not stopping.restore_best_weights or stopping.best_weights is None:
        return last, bool(stopping is not None and stopping.stopped_epoch > 0)
    return int(stopping.best_epoch), bool(stopping.stopped_epoch > 0)


def _finish(
    model: keras.Model,
    head: keras.Model | None,
    keras_history: keras.callbacks.History,
    stopping: keras.callbacks.EarlyStopping | None,
    train_params: dict[str, Any],
    info: dict[str, Any],
    validation: ValidationAUC,
    train_labels: np.ndarray,
    class_names: Sequence[str] | None,
) -> TrainResult:
    """The `TrainResult` of a finished fit, with `info["collapse"]` (`check_collapse` of
    the trained, restored model on the validation data)."""
    frame = history_frame(keras_history, train_params["lr_schedule"])
    best, stopped = _best_epoch(frame, stopping)
    names = list(class_names or (f"class {c}" for c in range(validation.num_classes)))
    accuracy = frame["accuracy"].to_numpy() if "accuracy" in frame else []
    info["collapse"] = check_collapse(
        validation.probabilities(), train_labels, accuracy, names, train_params["collapse"]
    )
    return TrainResult(model, head, frame, best, len(frame), stopped, info)


# --------------------------------------------------------------------------- the two modes
def fit_cached(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    model_params: dict[str, Any],
    train_params: dict[str, Any],
    num_classes: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    class_names: Sequence[str] | None = None,
) -> TrainResult:
    """Train the dense head on cached features (N, V, D); val uses view 0.

    Returns a `TrainResult` whose `model` and `head` are the trained head (features ->
    probabilities); wrap it with `petscan.model.network.build_full_model(head=...)` for images.
    The head's standardization (`model.standardize`) is fitted on every view of
    `train_features`, never on val. `info["collapse"]` is `check_collapse` on val.
    """
    seed = int(train_params["seed"])
    set_determinism(seed)
    sampler = CachedViewSampler(
        train_features,
        train_labels,
        batch_size=int(train_params["batch_size"]),
        epochs=int(train_params["epochs"]),
        seed=seed,
    )
    val_x = val_features[:, 0, :] if val_features.ndim == 3 else val_features
    val_x = np.asarray(val_x, dtype=np.float32)  # what Keras made of the arrays
    val_y = np.asarray(val_labels, dtype=np.int32)
    head = pmodel.build_head(
        train_features.shape[-1],
        num_classes,
        model_params,
        seed=seed,
        train_features=train_features,
    )
    # one call into TensorFlow per epoch: the head is small, so per-batch overhead dominates
    compile_model(
        head,
        train_params,
        num_classes,
        steps_per_execution=sampler.steps_per_epoch,
        fused_adam=True,
    )
    weights = losses.class_weights(train_labels, train_params["class_weight"], num_classes)
    validation = ValidationAUC(val_x, val_y, num_classes)
    cbs, stopping = build_callbacks(train_params, validation, callbacks)
    # tf.data for both: Keras' adapter for arrays builds a ~30 ms iterator every epoch
    val_data = _unthreaded(
        tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(VALIDATION_BATCH)
    )
    history = head.fit(
        sampler.dataset(),
        validation_data=val_data,
        epochs=int(train_params["epochs"]),
        steps_per_epoch=sampler.steps_per_epoch,
        shuffle=False,
        class_weight=weights,
        callbacks=cbs,
        verbose=verbose,
    )
    info = {"mode": "cached", "class_weight": weights, "views": int(train_features.shape[1])}
    return _finish(
        head, head, history, stopping, train_params, info, validation, train_labels, class_names
    )


def fit_end_to_end(
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    model_params: dict[str, Any],
    train_params: dict[str, Any],
    augmentation: dict[str, Any] | None,
    weights_path: str | Path | None,
    num_classes: int,
    root: str | Path = ".",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    class_names: Sequence[str] | None = None,
) -> TrainResult:
    """Train image -> probabilities from the files in the manifests, augmenting on-line.

    With `model.standardize` the head's statistics come from one pass of the frozen
    backbone over the plain (not augmented) training images.
    """
    seed = int(train_params["seed"])
    set_determinism(seed)
    size = tuple(model_params["input_size"])
    batch = int(train_params["batch_size"])
    resize_mode = model_params["resize"]
    augmenter = build_augmenter(augmentation, seed) if augmentation else None
    train_ds = image_dataset(
        train_frame,
        size,
        resize_mode,
        batch,
        augmenter=augmenter,
        shuffle=True,
        seed=seed,
        root=str(root),
    )
    val_ds = image_dataset(val_frame, size, resize_mode, batch, root=str(root))
    labels = train_frame["label"].to_numpy(dtype=np.int64)
    weights = losses.class_weights(labels, train_params["class_weight"], num_classes)
    unfreeze = int(train_params["unfreeze_top_layers"])
    train_features = None
    if model_params["standardize"]:
        plain = image_dataset(train_frame, size, resize_mode, batch, root=str(root))
        extractor = pmodel.build_feature_extractor(model_params, weights_path)
        train_features = extractor.predict(plain, verbose=0)
    strategy = distribution_strategy()
    with strategy.scope():
        head = pmodel.build_head(
            backbone_spec(model_params["backbone"]).feature_dim,
            num_classes,
            model_params,
            seed=seed,
            train_features=train_features,
        )
        model = pmodel.build_full_model(
            model_params, num_classes, weights_path, head=head, trainable_backbone_layers=unfreeze
        )
        compile_model(model, train_params, num_classes)
    val_labels = val_frame["label"].to_numpy(dtype=np.int64)
    validation = ValidationAUC(val_ds, val_labels, num_classes)
    cbs, stopping = build_callbacks(train_params, validation, callbacks)
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=int(train_params["epochs"]),
        shuffle=False,  # image_dataset shuffles (seeded) itself
        class_weight=weights,
        callbacks=cbs,
        verbose=verbose,
    )
    info = {
        "mode": "end_to_end",
        "class_weight": weights,
        "unfreeze_top_layers": unfreeze,
        "replicas": int(strategy.num_replicas_in_sync),
    }
    return _finish(
        model, None, history, stopping, train_params, info, validation, labels, class_names
    )


# --------------------------------------------------------------------------- collapse alarm
def check_collapse(
    val_proba: np.ndarray,
    train_labels: np.ndarray,
    train_accuracy: Sequence[float],
    class_names: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Whether the head collapsed, and the numbers that say so.

    Two signs, from `train.collapse`: one class takes at least `max_class_share` of the
    validation predictions, or the best training accuracy of any epoch stays within
    `prior_margin` of the share of the largest training class (what predicting that
    class for every image scores). `message` says it in plain words ("" when fine).
    """
    max_share = float(settings["max_class_share"])
    margin = float(settings["prior_margin"])
    predicted = np.asarray(val_proba).argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(class_names))
    top = int(counts.argmax())
    share = float(counts[top] / max(len(predicted), 1))
    prior = float(np.bincount(np.asarray(train_labels), minlength=len(class_names)).max())
    prior /= max(len(train_labels), 1)
    best_accuracy = float(np.nanmax(train_accuracy)) if len(train_accuracy) else math.nan
    single_class = share >= max_share
    at_prior = not best_accuracy > prior + margin
    reasons = []
    if single_class:
        reasons.append(
            f"the head predicts '{class_names[top]}' for {counts[top]} of {len(predicted)} "
            f"validation images ({share:.0%})"
        )
    if at_prior:
        reasons.append(
            f"its best training accuracy {best_accuracy:.3f} never left the class prior "
            f"{prior:.3f} (predicting the largest class for every image)"
        )
    message = ""
    if reasons:
        message = (
            "COLLAPSE: "
            + "; ".join(reasons)
            + ". The model has not learned to tell the classes apart: check the features' "
            "health in data/features/*.json, model.standardize and the learning rate."
        )
    return {
        "collapsed": bool(reasons),
        "val_majority_class": class_names[top],
        "val_majority_share": share,
        "train_accuracy_max": best_accuracy,
        "train_class_prior": prior,
        "message": message,
    }


# --------------------------------------------------------------------------- outputs
def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save a `.keras` file atomically (a reader never sees half a model), byte-reproducible."""
    path = Path(path)
    with io.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        pmodel.make_reproducible(tmp)
    return path


def save_outputs(
    result: TrainResult,
    full_model: keras.Model,
    out_dir: str | Path,
    weights: WeightsInfo,
    class_names: Sequence[str],
    seed: int,
) -> tuple[dict[str, Path], TrainInfo]:
    """Write `model.keras`, `history.csv` and `train.json` (with the model's sha256) into
    `out_dir`. Same inputs, same bytes: nothing run-dependent (times, run ids) goes in."""
    out_dir = Path(out_dir)
    paths = {"model": out_dir / "model.keras", "history": out_dir / "history.csv"}
    save_model(full_model, paths["model"])
    io.write_csv(paths["history"], result.history)
    info = TrainInfo(
        mode=result.info["mode"],
        weights=weights,
        class_names=list(class_names),
        seed=int(seed),
        best_epoch=int(result.best_epoch),
        epochs_run=int(result.epochs_run),
        stopped_early=bool(result.stopped_early),
        model_sha256=io.sha256_file(paths["model"]),
        best=result.best_values(),
        collapse=dict(result.info.get("collapse") or {}),
        details={k: v for k, v in result.info.items() if k not in ("mode", "collapse")},
    )
    paths["summary"] = write_train_info(out_dir, info)
    return paths, info


# --------------------------------------------------------------------------- the stage
def _check_feature_dim(dim: int, model_params: dict[str, Any], features_dir: Path) -> None:
    expected = backbone_spec(model_params["backbone"]).feature_dim
    if dim != expected:
        raise ValueError(
            f"{features_dir} holds {dim}-dim features but model.backbone "
            f"{model_params['backbone']!r} gives {expected}: re-run `dvc repro featurize`"
        )


def run_train(
    params: dict[str, Any], root: str | Path = ".", verbose: int | str = "auto"
) -> dict[str, Any]:
    """The `train` stage: fit (cached or end_to_end), save outputs, log one MLflow run.

    `params` holds the sections `data`, `model`, `train`, `mlflow`, plus `weights.dir`,
    `split.out_dir`, `featurize.out_dir` and (end_to_end) `featurize.augmentation`; all
    of it is logged as the run's params. Returns the contents of `train.json`.
    """
    root = Path(root)
    train_params, model_params = params["train"], params["model"]
    mode = train_params["mode"]
    class_names = config.class_names(params["data"])
    split_dir = root / params["split"]["out_dir"]
    manifests = manifest_paths(split_dir)
    weights_dir = root / params["weights"]["dir"]
    weights = read_weights_info(weights_dir)
    weights = dataclasses.replace(weights, weights_source=redact_text(weights.weights_source))
    weights_path = weights_file(weights_dir)
    # read before a run opens: a missing or stale cache is one error line, not a FAILED run
    cached = _load_cached(params, root, manifests) if mode == "cached" else None
    tags = tracking.run_tags(split_dir, weights)
    run_name = tracking.run_name("train", tags)
    with tracking.start_training_run(params["mlflow"], params, tags, run_name=run_name) as run:
        tracking.log_datasets(run.info.run_id, split_dir, root)
        logger = tracking.MlflowEpochLogger(run.info.run_id)
        if cached is not None:
            result, full = _train_cached(params, cached, weights_path, logger, verbose)
        else:
            result = _train_end_to_end(params, root, manifests, weights_path, logger, verbose)
            full = result.model
        seed = int(train_params["seed"])
        out_dir = root / train_params["out_dir"]
        paths, train_info = save_outputs(result, full, out_dir, weights, class_names, seed)
        summary = {**train_info.to_dict(), "mlflow_run_id": run.info.run_id}
        mlflow.set_tag("model_sha256", summary["model_sha256"])  # evaluate and plot find the run
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if k.startswith(("best_", "epochs_run"))}
        )
        _record_collapse(train_info.collapse)
        mlflow.log_artifact(str(paths["history"]))
        mlflow.log_artifact(str(paths["summary"]))
        example = [str(root / pd.read_csv(manifests["val"])["path"].iloc[0])]
        info = tracking.log_keras_model(
            paths["model"],
            params["mlflow"],
            class_names,
            model_params,
            input_example=example,
            max_pixels=params["split"]["max_pixels"],
            min_side=params["split"]["min_side"],
            max_aspect=params["split"]["max_aspect"],
        )
        version_tags = {**tags, "model_sha256": summary["model_sha256"]}
        summary["registered_version"] = tracking.register_version(
            info, params["mlflow"], version_tags
        )
    return summary


def _load_cached(params, root, manifests) -> tuple[FeatureSet, FeatureSet]:
    features_dir = root / params["featurize"]["out_dir"]
    train_set = load_features(features_dir, "train", manifests["train"])
    val_set = load_features(features_dir, "val", manifests["val"])
    _check_feature_dim(train_set.dim, params["model"], features_dir)
    return train_set, val_set


def _train_cached(params, cached, weights_path, logger, verbose):
    train_set, val_set = cached
    num_classes = len(_class_names(params))
    result = fit_cached(
        train_set.features,
        train_set.labels,
        val_set.features,
        val_set.labels,
        params["model"],
        params["train"],
        num_classes,
        callbacks=[logger],
        verbose=verbose,
        class_names=_class_names(params),
    )
    _log_feature_health(train_set.meta)
    full = pmodel.build_full_model(
        params["model"],
        num_classes,
        weights_path,
        head=result.head,
        precision=train_set.meta.precision,  # what the head's features saw
    )
    return result, full


def _train_end_to_end(params, root, manifests, weights_path, logger, verbose):
    frames = {s: pd.read_csv(manifests[s], dtype={"patient": str}) for s in ("train", "val")}
    augmentation = params["featurize"]["augmentation"]
    return fit_end_to_end(
        frames["train"],
        frames["val"],
        params["model"],
        params["train"],
        augmentation,
        weights_path,
        len(_class_names(params)),
        root=root,
        callbacks=[logger],
        verbose=verbose,
        class_names=_class_names(params),
    )


def _record_collapse(collapse: dict[str, Any]) -> None:
    """Warn in plain words and tag the MLflow run when the head collapsed."""
    mlflow.set_tag("collapse", str(collapse["collapsed"]).lower())
    mlflow.log_metrics(
        {
            "collapse/val_majority_share": collapse["val_majority_share"],
            "collapse/train_accuracy_max": collapse["train_accuracy_max"],
            "collapse/train_class_prior": collapse["train_class_prior"],
        }
    )
    if collapse["collapsed"]:
        log.warning(collapse["message"])


def _log_feature_health(meta: FeatureMeta) -> None:
    """The cached training features' health (scale, constant dimensions) as run params."""
    mlflow.log_params({f"features.health.{k}": f"{v:.4g}" for k, v in meta.health.items()})
    mlflow.log_param("features.precision", meta.precision)


def _class_names(params: dict[str, Any]) -> list[str]:
    return config.class_names(params["data"])
