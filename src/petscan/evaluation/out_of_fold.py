"""Scoring the `cv` protocol: the pooled out-of-fold predictions and the folds one by one.

`train` (with `train.protocol: cv`) writes `<train.out_dir>/cv/oof.csv`: every train + val
image once, predicted by the fold head that never saw its patient, with its `fold`.
`oof_results` scores the pooled predictions like a split (`predictions.split_metrics`:
patient-bootstrap intervals), adds each fold's headline metrics' mean and sd over folds
(`<metric>_fold_mean`, `<metric>_fold_sd`) and the ECE after the temperature
(`ece_calibrated`; the temperature was fitted on these same predictions, so that number is
in-sample: the test split's `ece` / `ece_uncalibrated` are the honest before/after).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from petscan.evaluation import metrics
from petscan.handoff.results import proba_columns
from petscan.utils.io import read_json

if TYPE_CHECKING:
    from petscan.params.learning import LossParams
    from petscan.params.results import EvaluateParams

FOLD_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ece")


def read_protocol(train_dir: str | Path) -> dict[str, Any]:
    """`<train.out_dir>/cv/protocol.json` ({"protocol": "holdout"} when absent: older runs)."""
    path = Path(train_dir) / "cv" / "protocol.json"
    return read_json(path) if path.is_file() else {"protocol": "holdout"}


def read_oof(train_dir: str | Path) -> pd.DataFrame:
    """`<train.out_dir>/cv/oof.csv` (the `cv` protocol's out-of-fold predictions)."""
    return pd.read_csv(Path(train_dir) / "cv" / "oof.csv", dtype={"patient": str})


def uncalibrate(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The inverse of `softmax(log(p) / T)`: `p^T` renormalized (the ensemble's mean before
    its temperature, to report the ECE before calibration on test)."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)) * temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def fold_table(
    y: np.ndarray, proba: np.ndarray, fold: np.ndarray, class_names: Sequence[str], ece_bins: int
) -> pd.DataFrame:
    """One row per fold: its size and the `FOLD_METRICS` of its held-out images."""
    rows = []
    for f in np.unique(fold):
        held = fold == f
        values = metrics.point_metrics(y[held], proba[held], list(class_names), ece_bins)
        rows.append({"fold": int(f), "n": int(held.sum()), **{k: values[k] for k in FOLD_METRICS}})
    return pd.DataFrame(rows)


def oof_results(
    frame: pd.DataFrame,
    class_names: Sequence[str],
    loss_params: LossParams,
    evaluate_params: EvaluateParams,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the pooled out-of-fold metrics with intervals and fold mean / sd, the fold table)."""
    from petscan.evaluation.predictions import split_metrics  # TensorFlow: the loss

    y = frame["label"].to_numpy(dtype=int)
    proba = frame[proba_columns(class_names)].to_numpy(dtype=np.float64)
    groups = frame["patient"].astype(str).to_numpy()
    values = split_metrics(y, proba, groups, class_names, loss_params, evaluate_params)
    table = fold_table(y, proba, frame["fold"].to_numpy(), class_names, evaluate_params.ece_bins)
    for name in FOLD_METRICS:
        values[f"{name}_fold_mean"] = float(table[name].mean())
        values[f"{name}_fold_sd"] = float(table[name].std(ddof=1))
    calibrated = [f"calibrated_{c}" for c in proba_columns(class_names)]
    if all(c in frame for c in calibrated):
        values["ece_calibrated"] = metrics.expected_calibration_error(
            y, frame[calibrated].to_numpy(dtype=np.float64), evaluate_params.ece_bins
        )
    values["folds"] = int(len(table))
    return values, table
