"""What evaluate and explain hand to plot and to DVC: predictions, the gallery, metrics.

<evaluate.out_dir>/predictions_*.csv  evaluate       plot (`read_predictions`)
<explain.out_dir>/gallery/gallery.csv explain        plot
<evaluate.out_dir>/metrics.json       evaluate       DVC: `dvc metrics show`, `dvc exp show`
<evaluate.out_dir>/metrics_full.json  evaluate       readers, the model version's notes
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petscan.utils.errors import BadInputError
from petscan.utils.io import write_json

METRICS_FILE = "metrics.json"
METRICS_FULL_FILE = "metrics_full.json"

# ----------------------------------------------------------------------------- predictions
# <evaluate.out_dir>/predictions_{split}.csv: evaluate writes, plot reads.

PROBA_PREFIX = "proba/"
TRUE_COLUMN = "true_class"
PRED_COLUMN = "predicted_class"


def proba_columns(class_names: Sequence[str]) -> list[str]:
    """Column names of the per-class probabilities in a predictions CSV."""
    return [f"{PROBA_PREFIX}{name}" for name in class_names]


def predictions_frame(
    frame: pd.DataFrame, proba: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """path, patient, true class, one probability column per class, predicted class."""
    predicted = np.argmax(proba, axis=1)
    out = pd.DataFrame(
        {
            "path": frame["path"].to_numpy(),
            "patient": frame["patient"].astype(str).to_numpy(),
            "label": frame["label"].to_numpy(dtype=int),
            TRUE_COLUMN: [class_names[i] for i in frame["label"].to_numpy(dtype=int)],
        }
    )
    for column, values in zip(proba_columns(class_names), proba.T, strict=True):
        out[column] = values
    out["predicted_label"] = predicted
    out[PRED_COLUMN] = [class_names[i] for i in predicted]
    return out


def read_predictions(
    path: str | Path, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(integer labels, probabilities (N, K), frame) from a predictions CSV."""
    frame = pd.read_csv(path, dtype={"patient": str})
    columns = proba_columns(class_names)
    missing = [c for c in ["label", *columns] if c not in frame]
    if missing:
        raise BadInputError(
            f"{path} lacks columns {missing}: it was written for other classes; "
            f"re-run `dvc repro evaluate`"
        )
    return frame["label"].to_numpy(dtype=int), frame[columns].to_numpy(dtype=float), frame


# ----------------------------------------------------------------------------- gallery
# <explain.out_dir>/gallery/gallery.csv and its PNGs: explain writes, plot draws them.

GALLERY_FILE = "gallery.csv"
GALLERY_SPLIT = "test"  # the gallery shows test images


# ----------------------------------------------------------------------------- metrics

# metrics.json, the DVC metrics file (`dvc exp show`, `dvc metrics diff`): the numbers a
# reader compares, each with its bootstrap interval. Everything else: metrics_full.json.
COMPACT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ece")


def compact_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """`random_init` and `weights_label`, then per split each of `COMPACT_METRICS` with
    `_low` / `_high` bounds and `single_class_predictions` (the collapse alarm of that split).

    `{"random_init": true, "test": {"accuracy": 0.35, "accuracy_low": 0.19, ...}}`; the
    interval is the bootstrap one of `evaluation.metrics.evaluate_predictions` (`<m>_ci_low/high`).
    """
    compact: dict[str, Any] = {"random_init": bool(results.get("random_init", False))}
    if results.get("weights_label"):  # which backbone every number below came from
        compact["weights_label"] = str(results["weights_label"])
    if isinstance(results.get("collapse"), dict) and "collapsed" in results["collapse"]:
        compact["collapse"] = {"collapsed": bool(results["collapse"]["collapsed"])}  # train's alarm
    for split, values in results.items():
        if not (isinstance(values, dict) and "accuracy" in values):
            continue  # not a split (e.g. the train stage's `collapse` record)
        row: dict[str, Any] = {}
        for name in COMPACT_METRICS:
            row[name] = values.get(name)
            row[f"{name}_low"] = values.get(f"{name}_ci_low")
            row[f"{name}_high"] = values.get(f"{name}_ci_high")
            if f"{name}_fold_sd" in values:  # the cv protocol's out-of-fold split
                row[f"{name}_fold_mean"] = values[f"{name}_fold_mean"]
                row[f"{name}_fold_sd"] = values[f"{name}_fold_sd"]
        if "majority_prediction_share" in values:  # the head predicts one class for every image
            row["single_class_predictions"] = bool(values["majority_prediction_share"] >= 1.0)
        compact[split] = row
    return compact


def json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None, so a metrics file is strict JSON (DVC shows None as '-')."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out[key] = json_safe(value)
        elif isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out


def write_metrics(out_dir: str | Path, results: Mapping[str, Any]) -> tuple[Path, Path]:
    """`metrics.json` (compact, for DVC) and `metrics_full.json` (every metric)."""
    compact, full = Path(out_dir) / METRICS_FILE, Path(out_dir) / METRICS_FULL_FILE
    write_json(compact, json_safe(compact_metrics(results)))
    write_json(full, json_safe(results))
    return compact, full
