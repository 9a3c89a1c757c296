"""A trial: sample the space, train the head with `training.fit.fit_cached`, score it.

The trial's values replace keys of the `train` and `model` sections through the schema
(`params.schema.with_overrides`), so a trial gets the same checks as params.yaml. The
score is a loss-independent metric of the restored head on val (`tune.objective`, any
scalar of `evaluation.metrics.point_metrics`: `params.learning.OBJECTIVES`), or its mean
over `tune.cv_folds` StratifiedGroupKFold folds of train + val (patients kept together).
The same metric is reported every epoch to the pruner.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import optuna

from petscan.data.folds import patient_folds
from petscan.evaluation import metrics
from petscan.params.learning import OBJECTIVES
from petscan.params.schema import with_overrides
from petscan.params.space import overrides_from, sample
from petscan.training import fit as training
from petscan.tuning.data import TuneData
from petscan.tuning.storage import IN_FLIGHT

if TYPE_CHECKING:
    from petscan.params.schema import Params
    from petscan.params.space import Dimension
    from petscan.tuning.study_runs import Tracker

log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # a trial's user attribute `worker`

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, y, val x, y


def objective_value(
    name: str, y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> float:
    """The objective metric of `proba` (NaN when the predictions are not finite)."""
    proba = np.asarray(proba, dtype=np.float64)
    if not np.all(np.isfinite(proba)):
        return math.nan
    if name == "roc_auc_macro":  # the default, once per epoch: skip the other metrics
        y, p = metrics.check_inputs(y_true, proba, len(class_names))
        if len(np.unique(y)) < len(class_names):
            return math.nan
        return float(np.mean(metrics.roc_auc_per_class(y, p)))
    return float(metrics.point_metrics(np.asarray(y_true), proba, list(class_names))[name])


def predict_proba(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Probabilities of a head on (N, D) features (one batch; val is small)."""
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)


class EpochObjective(keras.callbacks.Callback):
    """Scores the head on the held-out rows after every epoch and feeds the pruner.

    Adds `val_<objective>` to the epoch logs, keeps every epoch's logs in `rows`
    (flushed to MLflow when the trial ends), reports the value to `trial` at step
    `step_offset + epoch` and raises `optuna.TrialPruned` when the pruner says so.
    A non-finite loss or score stops the training (the trial then fails).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        objective: str,
        class_names: Sequence[str],
        trial: optuna.Trial | None = None,
        step_offset: int = 0,
    ) -> None:
        super().__init__()
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.asarray(y)
        self.objective = objective
        self.class_names = list(class_names)
        self.trial = trial
        self.step_offset = int(step_offset)
        self.rows: list[dict[str, float]] = []
        self.diverged = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        key = f"val_{self.objective}"
        if key in logs:  # the training's own val AUC callback scored these rows this epoch
            value = float(logs[key])
        else:
            value = objective_value(
                self.objective, self.y, predict_proba(self.model, self.x), self.class_names
            )
            logs[key] = value
        self.rows.append({"epoch": int(epoch), **{k: float(v) for k, v in logs.items()}})
        if not math.isfinite(value) or not math.isfinite(float(logs.get("loss", 0.0))):
            self.diverged = True
            self.model.stop_training = True
            return
        if self.trial is None:
            return
        self.trial.report(value, self.step_offset + int(epoch))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.objective} {value:.4f})")


class SurplusTrial(RuntimeError):
    """Workers asked for one trial more than `tune.n_trials` at the same moment: the one with
    the higher number does not run (it is recorded FAIL with the user attribute `surplus`)."""


def is_surplus(trial: optuna.Trial, target: int) -> bool:
    """Whether the trials numbered before `trial` that are done, running or waiting already
    reach `target`. Numbers are given out by the storage, so of two workers asking at once
    the later one yields, and the study stops at exactly `target` (a retried trial counts
    in place of the one it replaces, which failed)."""
    before = [
        t
        for t in trial.study.get_trials(deepcopy=False, states=IN_FLIGHT)
        if t.number < trial.number
    ]
    return len(before) >= target


class TrialFailed(RuntimeError):
    """A trial whose training diverged or whose score is not a number."""


class Objective:
    """`objective(trial) -> float`: sample, train with `fit_cached`, score on val (or CV).

    `params` holds the study's sections (`tune`, `train`, `model`, `data`) as a whole
    `Params`, which each trial's overrides are validated against; `dims` is `tune.space`
    as `params.space.check_space` returns it.
    """

    def __init__(
        self,
        params: Params,
        data: TuneData,
        dims: Sequence[Dimension],
        tracker: Tracker | None = None,
    ) -> None:
        self.params = params
        self.tune = params.tune
        self.data = data
        self.dims = list(dims)
        self.tracker = tracker
        self.num_classes = len(data.class_names)
        self.pool, self.folds = None, None
        if self.tune.cv_folds >= 2:
            self.pool = data.combined()
            _, labels, groups = self.pool
            # train.seed, as the cv protocol (train.protocol: cv): the same k, the same folds
            self.folds = patient_folds(labels, groups, self.tune.cv_folds, params.train.seed)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)  # which machine and process ran it
        if is_surplus(trial, self.tune.n_trials):
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(
                f"trial {trial.number}: the trials before it reach tune.n_trials "
                f"({self.tune.n_trials}); not run"
            )
        values = sample(self.dims, trial)
        overrides = overrides_from(values, self.num_classes)
        trial.set_user_attr("overrides", overrides)
        run_id = self.tracker.start_trial(trial, values, overrides) if self.tracker else None
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        state, value, rows, final = "interrupted", math.nan, [], {}
        try:
            value, final = self.evaluate(trial, overrides, rows)
            if "best_epoch" in final:
                trial.set_user_attr("best_epoch", int(final["best_epoch"]))
            if not math.isfinite(value):
                raise TrialFailed(
                    f"{self.tune.objective} is {value}: the training diverged (NaN loss)"
                )
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        except Exception as err:
            state = "failed"
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            raise
        finally:
            epochs = final.get("epochs_run", len(rows))  # rows: one per epoch (and fold)
            with contextlib.suppress(Exception):
                trial.set_user_attr("epochs_run", int(epochs))
            if run_id:
                self.tracker.finish_trial(run_id, trial.number, state, value, rows, final)
            keras.backend.clear_session(free_memory=False)

    def evaluate(
        self,
        trial: optuna.Trial | None,
        overrides: Mapping[str, Any],
        rows: list[dict[str, float]] | None = None,
    ) -> tuple[float, dict[str, float]]:
        """(objective, final metrics) of one set of overrides; epoch logs go to `rows`."""
        rows = rows if rows is not None else []
        where = f"tune trial {trial.number}" if trial is not None else "tune overrides"
        params = with_overrides(self.params, overrides, where)
        if self.folds is None:
            d = self.data
            return self._fit(trial, params, (d.train_x, d.train_y, d.val_x, d.val_y), rows)
        x, y, _ = self.pool
        epochs = params.train.epochs
        scores, finals = [], []
        for k, (tr, va) in enumerate(self.folds):
            fold = (x[tr], y[tr], x[va][:, :1], y[va])
            score, final = self._fit(trial, params, fold, rows, k * epochs, f"fold{k}/")
            scores.append(score)
            finals.append(final)
            if not math.isfinite(score):
                break
        final = {k: v for f in finals for k, v in f.items()}
        final["objective_std"] = float(np.std(scores))
        final["epochs_run"] = int(sum(f[f"fold{k}/epochs_run"] for k, f in enumerate(finals)))
        return float(np.mean(scores)), final

    def _fit(
        self,
        trial: optuna.Trial | None,
        params: Params,
        arrays: Arrays,
        rows: list[dict[str, float]],
        offset: int = 0,
        prefix: str = "",
    ) -> tuple[float, dict[str, float]]:
        """Train one head on `arrays`; (score, final metrics named `prefix` + name)."""
        train_x, train_y, val_x, val_y = arrays
        names = self.data.class_names
        reporter = EpochObjective(val_x[:, 0], val_y, self.tune.objective, names, trial, offset)
        try:
            result = training.fit_cached(
                train_x,
                train_y,
                val_x,
                val_y,
                params.model,
                params.train,
                self.num_classes,
                callbacks=[reporter],
                verbose=0,
            )
        finally:
            for row in reporter.rows:
                rows.append({prefix + k if k != "epoch" else k: v for k, v in row.items()})
        if reporter.diverged:
            return math.nan, {f"{prefix}epochs_run": len(reporter.rows)}
        proba = predict_proba(result.head, np.asarray(val_x[:, 0], dtype=np.float32))
        value = objective_value(self.tune.objective, val_y, proba, names)
        final: dict[str, float] = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch}
        if math.isfinite(value):
            point = metrics.point_metrics(np.asarray(val_y), proba, names)
            final.update({f"final_{k}": float(v) for k, v in point.items() if k in OBJECTIVES})
        return value, {prefix + k: v for k, v in final.items()}
