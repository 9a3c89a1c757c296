"""The `cv` protocol (`train.protocol: cv`): one head per patient fold of train + val.

`fit_folds` cuts the pooled train + val features into `train.folds` folds
(`data.folds.patient_folds`: the same folds `make tune` uses with `tune.cv_folds`). For
each fold it trains a head with the current recipe (`fit.fit_cached`), stopping early on
an inner split of the fold's own training patients (`data.folds.inner_split`), never on the
held-out fold, and predicts the held-out fold's plain views: every pooled image gets
exactly one out-of-fold prediction. A temperature is fitted on those out-of-fold
predictions (`model.calibration.fit_temperature`; the test split is never seen). The
heads become one image model in `model.ensemble`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from petscan.data.folds import Fold, inner_split, patient_folds
from petscan.model.calibration import fit_temperature, scale_probabilities
from petscan.training.fit import TrainResult, fit_cached

if TYPE_CHECKING:
    import keras

    from petscan.params.learning import ModelParams, TrainParams


@dataclass
class CvResult:
    """The fold heads, their trainings and the out-of-fold predictions of the pool."""

    results: list[TrainResult]  # one per fold; `.head` maps features -> probabilities
    folds: list[Fold]  # (training, held-out) indices into the pool
    oof: np.ndarray  # (N, K) each pooled image's prediction by the head that never saw it
    fold_of: np.ndarray  # (N,) the fold that held each image out
    temperature: float  # fitted on `oof`

    @property
    def heads(self) -> list[keras.Model]:
        return [r.head for r in self.results]

    def calibrated_oof(self) -> np.ndarray:
        return scale_probabilities(self.oof, self.temperature)

    def history(self) -> pd.DataFrame:
        """The folds' histories one after another, with a `fold` column (last)."""
        frames = [r.history.assign(fold=i) for i, r in enumerate(self.results)]
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> dict[str, Any]:
        """What train.json records of the folds (no run-dependent values)."""
        return {
            "protocol": "cv",
            "folds": len(self.results),
            "temperature": round(self.temperature, 6),
            "fold_sizes": [int(len(va)) for _, va in self.folds],
            "fold_best_epochs": [int(r.best_epoch) for r in self.results],
            "fold_epochs_run": [int(r.epochs_run) for r in self.results],
        }


def fit_folds(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    model: ModelParams,
    train: TrainParams,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    verbose: int | str = 0,
) -> CvResult:
    """Train `train.folds` heads on the pool `x` (N, V, D) (view 0 plain), labels `y` and
    patient `groups`; the out-of-fold predictions use view 0 of the held-out images."""
    y = np.asarray(y)
    folds = patient_folds(y, groups, train.folds, train.seed, setting="train.folds")
    oof = np.full((len(y), num_classes), np.nan, dtype=np.float64)
    fold_of = np.full(len(y), -1, dtype=np.int64)
    results = []
    for i, (train_idx, held_idx) in enumerate(folds):
        fit_idx, stop_idx = inner_split(train_idx, y, groups, train.folds, train.seed + i)
        result = fit_cached(
            x[fit_idx],
            y[fit_idx],
            x[stop_idx][:, :1],
            y[stop_idx],
            model,
            train,
            num_classes,
            verbose=verbose,
            class_names=class_names,
        )
        held = np.asarray(x[held_idx][:, 0], dtype=np.float32)
        # one eager call: `predict` would trace a new function for every fold's head
        oof[held_idx] = np.asarray(result.head(held, training=False), dtype=np.float64)
        fold_of[held_idx] = i
        results.append(result)
    if np.isnan(oof).any() or (fold_of < 0).any():  # patient_folds covers every index once
        raise RuntimeError("some pooled images got no out-of-fold prediction")
    return CvResult(results, folds, oof, fold_of, fit_temperature(y, oof))
