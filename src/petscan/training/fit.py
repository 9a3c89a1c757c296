"""Fitting the classifier: the seed notebook's recipe in two modes.

The recipe: Adam, piecewise learning rate, early stopping with the best weights restored,
class weights and a focal loss on integer labels (`compile_model`, `callbacks`). After
training, `collapse.check_collapse` raises the alarm when the head learned nothing.

* `fit_cached` trains only the dense head on the backbone features that `featurize`
  cached, every epoch every training image once in one of its cached views
  (`sampler.CachedViewSampler`); validation uses the plain view (view 0).
* `fit_end_to_end` trains from the image files, with the augmenter on-line, through the
  backbone (its top `train.unfreeze_top_layers` layers trainable, BatchNorm frozen),
  under `tf.distribute.MirroredStrategy` when several GPUs are visible.

Both return a `TrainResult`: the model, its history (`history.csv`) and its best epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from petscan.data.tf_data import build_augmenter, image_dataset
from petscan.handoff.records import HISTORY_COLUMNS
from petscan.model import losses, network, schedules
from petscan.model.backbones import backbone_spec
from petscan.training.callbacks import ValidationAUC, build_callbacks
from petscan.training.collapse import check_collapse
from petscan.training.fused_adam import make_optimizer
from petscan.training.sampler import CachedViewSampler, unthreaded
from petscan.training.seeding import set_determinism

if TYPE_CHECKING:
    from petscan.params.learning import AugmentationParams, LrSchedule, ModelParams, TrainParams

VALIDATION_BATCH = 32  # Keras' batch for validation arrays: val_loss is a mean over batches


def compile_model(
    model: keras.Model,
    train: TrainParams,
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
    first_lr = train.lr_schedule.values[0]
    loss = losses.make_loss(train.loss, num_classes)
    optimizer = make_optimizer(train.optimizer, first_lr, fused=fused_adam)
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
    history: keras.callbacks.History, lr_schedule: LrSchedule | None = None
) -> pd.DataFrame:
    """Keras history -> DataFrame with `HISTORY_COLUMNS` (epoch 0-based)."""
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", list(history.epoch))
    if "learning_rate" not in frame and lr_schedule is not None:
        frame["learning_rate"] = [
            schedules.piecewise_lr(e, lr_schedule.boundaries, lr_schedule.values)
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
    train: TrainParams,
    info: dict[str, Any],
    validation: ValidationAUC,
    train_labels: np.ndarray,
    class_names: Sequence[str] | None,
) -> TrainResult:
    """The `TrainResult` of a finished fit, with `info["collapse"]` (`check_collapse` of
    the trained, restored model on the validation data)."""
    frame = history_frame(keras_history, train.lr_schedule)
    best, stopped = _best_epoch(frame, stopping)
    names = list(class_names or (f"class {c}" for c in range(validation.num_classes)))
    accuracy = frame["accuracy"].to_numpy() if "accuracy" in frame else []
    info["collapse"] = check_collapse(
        validation.probabilities(), train_labels, accuracy, names, train.collapse
    )
    return TrainResult(model, head, frame, best, len(frame), stopped, info)


# --------------------------------------------------------------------------- the two modes
def fit_cached(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    model: ModelParams,
    train: TrainParams,
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
    seed = train.seed
    set_determinism(seed)
    sampler = CachedViewSampler(
        train_features, train_labels, batch_size=train.batch_size, epochs=train.epochs, seed=seed
    )
    val_x = val_features[:, 0, :] if val_features.ndim == 3 else val_features
    val_x = np.asarray(val_x, dtype=np.float32)  # what Keras made of the arrays
    val_y = np.asarray(val_labels, dtype=np.int32)
    head = network.build_head(
        train_features.shape[-1],
        num_classes,
        model,
        seed=seed,
        train_features=train_features,
    )
    # one call into TensorFlow per epoch: the head is small, so per-batch overhead dominates
    compile_model(
        head, train, num_classes, steps_per_execution=sampler.steps_per_epoch, fused_adam=True
    )
    weights = losses.class_weights(train_labels, train.class_weight, num_classes)
    validation = ValidationAUC(val_x, val_y, num_classes)
    cbs, stopping = build_callbacks(train, validation, callbacks)
    # tf.data for both: Keras' adapter for arrays builds a ~30 ms iterator every epoch
    val_data = unthreaded(
        tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(VALIDATION_BATCH)
    )
    history = head.fit(
        sampler.dataset(),
        validation_data=val_data,
        epochs=train.epochs,
        steps_per_epoch=sampler.steps_per_epoch,
        shuffle=False,
        class_weight=weights,
        callbacks=cbs,
        verbose=verbose,
    )
    info = {"mode": "cached", "class_weight": weights, "views": int(train_features.shape[1])}
    return _finish(
        head, head, history, stopping, train, info, validation, train_labels, class_names
    )


def fit_end_to_end(
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    model: ModelParams,
    train: TrainParams,
    augmentation: AugmentationParams | None,
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
    seed = train.seed
    set_determinism(seed)
    size = tuple(model.input_size)
    batch = train.batch_size
    resize_mode = model.resize
    augmenter = build_augmenter(augmentation, seed) if augmentation is not None else None
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
    weights = losses.class_weights(labels, train.class_weight, num_classes)
    unfreeze = train.unfreeze_top_layers
    train_features = None
    if model.standardize:
        plain = image_dataset(train_frame, size, resize_mode, batch, root=str(root))
        extractor = network.build_feature_extractor(model, weights_path)
        train_features = extractor.predict(plain, verbose=0)
    strategy = distribution_strategy()
    with strategy.scope():
        head = network.build_head(
            backbone_spec(model.backbone).feature_dim,
            num_classes,
            model,
            seed=seed,
            train_features=train_features,
        )
        full = network.build_full_model(
            model, num_classes, weights_path, head=head, trainable_backbone_layers=unfreeze
        )
        compile_model(full, train, num_classes)
    val_labels = val_frame["label"].to_numpy(dtype=np.int64)
    validation = ValidationAUC(val_ds, val_labels, num_classes)
    cbs, stopping = build_callbacks(train, validation, callbacks)
    history = full.fit(
        train_ds,
        validation_data=val_ds,
        epochs=train.epochs,
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
    return _finish(full, None, history, stopping, train, info, validation, labels, class_names)
