"""Keras callbacks of the training recipe, and the order they run in (`build_callbacks`).

Early stopping, the plateau schedule and the best epoch watch
`train.early_stopping.monitor`: by default `val_roc_auc_macro` (macro one-vs-rest ROC AUC
on val, added to the logs every epoch by `ValidationAUC`) or `val_data_loss`, the
validation loss without the head's L2 penalty; never Keras' `val_loss` unless asked for:
it includes the penalty, and at a constant prediction it keeps falling while the weights
shrink. `MlflowEpochLogger` logs every epoch's metrics into the training run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric

from petscan.evaluation import metrics
from petscan.handoff.records import EPOCH_METRICS
from petscan.model import schedules

if TYPE_CHECKING:
    from petscan.params.learning import LrSchedule, ReduceLrOnPlateau, TrainParams


def monitor_mode(monitor: str) -> str:
    """ "min" for a loss, "max" for a score (the schema allows only these four monitors:
    `val_data_loss`, `val_loss`, `val_accuracy`, `val_roc_auc_macro`)."""
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

    def __init__(self, schedule: LrSchedule, plateau: ReduceLrOnPlateau) -> None:
        super().__init__()
        self.boundaries = list(schedule.boundaries)
        self.values = list(schedule.values)
        self.monitor = plateau.monitor
        self.factor = plateau.factor
        self.patience = plateau.patience
        self.min_lr = plateau.min_lr
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
    train: TrainParams,
    validation: ValidationAUC | None = None,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> tuple[list[keras.callbacks.Callback], keras.callbacks.EarlyStopping | None]:
    """Validation AUC, learning-rate schedule, early stopping, then `extra`.

    The order matters: Keras calls the callbacks in list order with one logs dict, so
    `val_roc_auc_macro` is in the logs before early stopping reads it, and loggers in
    `extra` see the final logs.
    """
    callbacks: list[keras.callbacks.Callback] = [validation] if validation else []
    plateau = train.reduce_lr_on_plateau
    if plateau.enabled:
        callbacks.append(PlateauScaledSchedule(train.lr_schedule, plateau))
    else:
        callbacks.append(schedules.lr_scheduler(train.lr_schedule))
    stopping = None
    es = train.early_stopping
    if es.enabled:
        stopping = keras.callbacks.EarlyStopping(
            monitor=es.monitor,
            mode=monitor_mode(es.monitor),
            patience=es.patience,
            restore_best_weights=es.restore_best_weights,
            min_delta=es.min_delta,
            verbose=0,
        )
        callbacks.append(stopping)
    return callbacks + list(extra), stopping


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log loss, accuracy, val_loss, val_accuracy and learning_rate once per epoch.

    One `log_batch` call per epoch, `step` = the 0-based epoch. The learning rate is
    read from the optimizer at the first batch of the epoch, i.e. the rate the epoch
    actually used, whatever order the scheduler callbacks run in.
    """

    def __init__(
        self,
        run_id: str | None = None,
        keys: Sequence[str] = EPOCH_METRICS,
        prefix: str = "",
    ):
        super().__init__()
        self.run_id = run_id
        self.keys = tuple(keys)
        self.prefix = prefix
        self._epoch_lr: float | None = None
        self._client: mlflow.MlflowClient | None = None

    def _current_lr(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))

    def on_train_begin(self, logs=None):
        if self.run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise RuntimeError(
                    "MlflowEpochLogger needs an active MLflow run "
                    "(tracking.runs.start_training_run) or an explicit run_id"
                )
            self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_lr = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch_lr is None:
            self._epoch_lr = self._current_lr()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = {k: float(logs[k]) for k in self.keys if k in logs}
        lr = self._epoch_lr if self._epoch_lr is not None else self._current_lr()
        if lr is not None:
            values["learning_rate"] = lr
        timestamp = int(pd.Timestamp.now().timestamp() * 1000)
        metrics = [Metric(f"{self.prefix}{k}", v, timestamp, int(epoch)) for k, v in values.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)
