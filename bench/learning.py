"""Does the head learn? The pipeline's head beside a linear probe and a pixel baseline.

The same five patient-grouped folds (scikit-learn's `StratifiedGroupKFold`, shuffled with
`tune.seed`) over train + val of the demo data; every row is scored on the held-out fold
(view 0 only) by accuracy and macro one-vs-rest ROC AUC:

- head:   the pipeline's head and recipe from params.yaml (`training.fit.fit_cached`, all
          cached views); its early stopping watches an inner validation part carved from the
          fold's own training patients, never the held-out fold;
- probe:  StandardScaler + logistic regression on the same cached features (view 0);
- pixels: StandardScaler + logistic regression on 32 x 32 grey pixels of the same images.

It prints mean +- sd per row, the ratio head / probe, and per fold the share of held-out
images given the most frequent predicted class (1.00 = the head collapsed onto one class).
`--seed-head` adds the seed notebook's head and recipe as a row: no standardization, its
learning rates, early stopping on Keras' `val_loss` with patience 5 (`SEED_RECIPE`).

    .venv/bin/python bench/learning.py            # after `make run` (needs the feature cache)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from petscan.data.images import load_rgb
from petscan.evaluation.metrics import bootstrap_distribution, percentile_interval
from petscan.params.loading import PARAMS_FILE, load_validated, workspace_root
from petscan.params.schema import with_overrides
from petscan.training.fit import fit_cached
from petscan.tuning.data import cv_folds, load_tune_data

if TYPE_CHECKING:
    from petscan.params.schema import Params

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train idx, test idx) -> proba
# What the seed notebook ran, over params.yaml: the row that shows the collapse.
SEED_RECIPE = {
    "model.standardize": False,
    "train.lr_schedule.boundaries": [5, 15, 25],
    "train.lr_schedule.values": [5e-5, 1e-4, 5e-5, 1e-5],
    "train.early_stopping.monitor": "val_loss",
    "train.early_stopping.patience": 5,
}


def pixels(root: Path, params: Params, size: int = 32) -> np.ndarray:
    """Grey pixels (N, size * size) in [0, 1] of train + val, in the feature cache's order."""
    split_dir = root / params.split.out_dir
    paths = pd.concat(pd.read_csv(split_dir / f"{s}.csv") for s in ("train", "val"))["path"]
    rows = []
    for path in paths:
        grey = Image.fromarray(load_rgb(root / path)).convert("L")
        rows.append(np.asarray(grey.resize((size, size), Image.BILINEAR), np.float32).ravel())
    return np.stack(rows) / 255.0


def logistic(x: np.ndarray, y: np.ndarray) -> Scorer:
    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        return model.fit(x[train], y[train]).predict_proba(x[test])

    return score


def head(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, params: Params, names: list[str], seed: int
) -> Scorer:
    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        inner = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
        fit_idx, stop_idx = next(inner.split(train, y[train], groups[train]))
        fit, stop = train[fit_idx], train[stop_idx]
        result = fit_cached(
            x[fit], y[fit], x[stop][:, :1], y[stop], params.model, params.train,
            len(names), verbose=0, class_names=names,
        )  # fmt: skip
        features = np.ascontiguousarray(x[test][:, 0], dtype=np.float32)
        return np.asarray(result.head(features, training=False))

    return score


def evaluate(scorer: Scorer, y: np.ndarray, groups: np.ndarray, folds: list) -> dict:
    """Per-fold accuracy, macro AUC and majority share; and the same two metrics on the
    pooled out-of-fold predictions with patient-bootstrap 95% intervals."""
    accuracy, auc, majority = [], [], []
    pooled = np.zeros((len(y), len(np.unique(y))))
    for train, test in folds:
        proba = scorer(train, test)
        pooled[test] = proba
        predicted = proba.argmax(axis=1)
        accuracy.append(float((predicted == y[test]).mean()))
        auc.append(float(roc_auc_score(y[test], proba, multi_class="ovr", average="macro")))
        majority.append(float(np.bincount(predicted).max() / len(predicted)))
    pooled_scores = {}
    for name, fn in (("auc", macro_auc), ("accuracy", top1)):
        values = bootstrap_distribution(fn, y, pooled, groups, n_resamples=1000, seed=0)
        low, high, _ = percentile_interval(values["value"], 0.95)
        pooled_scores[name] = (fn(y, pooled), low, high)
    return {
        "accuracy": np.array(accuracy),
        "auc": np.array(auc),
        "majority": np.array(majority),
        "pooled": pooled_scores,
    }


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def top1(y: np.ndarray, proba: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file")
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped folds")
    parser.add_argument("--seed-head", action="store_true", help="add the seed's head as a row")
    args = parser.parse_args(argv)
    root = workspace_root()
    params = load_validated(args.params)
    seed = params.tune.seed
    start = time.perf_counter()
    data = load_tune_data(root, params)
    x, y, groups = data.combined()
    folds = cv_folds(y, groups, args.folds, seed)
    label = data.weights.weights_label if data.weights else "backbone"
    print(
        f"{len(y)} images of {len(set(groups))} patients (train + val), {args.folds} folds, "
        f"features {x.shape[1]} views x {x.shape[2]} from a {label}"
    )
    rows = {
        "head (params.yaml)": head(x, y, groups, params, data.class_names, seed),
        "probe (logistic, standardized features)": logistic(x[:, 0], y),
        "pixels (logistic, 32 x 32 grey)": logistic(pixels(root, params), y),
    }
    if args.seed_head:
        seed_params = with_overrides(params, SEED_RECIPE, args.params)
        rows["the seed's head and recipe"] = head(x, y, groups, seed_params, data.class_names, seed)
    results = {name: evaluate(scorer, y, groups, folds) for name, scorer in rows.items()}
    print(f"\n{'row':<42} {'accuracy':>15} {'macro ROC AUC':>15}  majority share per fold")
    for name, r in results.items():
        shares = " ".join(f"{v:.2f}" for v in r["majority"])
        print(
            f"{name:<42} {r['accuracy'].mean():.3f} +- {r['accuracy'].std():.3f}"
            f"  {r['auc'].mean():.3f} +- {r['auc'].std():.3f}  {shares}"
        )
    head_auc, probe_auc = (results[k]["auc"].mean() for k in list(rows)[:2])
    print("\npooled out-of-fold predictions, patient-bootstrap 95% intervals:")
    for name, r in results.items():
        (auc, a_low, a_high), (acc, c_low, c_high) = r["pooled"]["auc"], r["pooled"]["accuracy"]
        print(
            f"{name:<42} macro AUC {auc:.3f} [{a_low:.3f}, {a_high:.3f}]"
            f"  accuracy {acc:.3f} [{c_low:.3f}, {c_high:.3f}]"
        )
    print(f"\nhead / probe macro AUC: {head_auc / probe_auc:.3f} (target >= 0.98)")
    collapsed = int((results["head (params.yaml)"]["majority"] >= 0.95).sum())
    print(f"folds where the head predicts one class for >= 95% of images: {collapsed}")
    print(f"chance (majority class): {np.bincount(y).max() / len(y):.3f}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
