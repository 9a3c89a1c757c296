"""The one fold definition: patient-grouped, stratified k folds over train + val.

Both the `cv` protocol of `train` (`train.protocol: cv`, `train.folds`) and `make tune`
(`tune.cv_folds`) cut their folds here, so a fold means the same images in both. The test
split never enters: the pool is the train manifest's images followed by val's.

* `pool_splits` stacks train and val features (val's plain view repeated to train's views),
  labels and patient groups into one pool.
* `patient_folds` cuts the pool with scikit-learn's `StratifiedGroupKFold` (shuffled,
  seeded): a patient's images are always in the same fold.
* `inner_split` cuts a fold's training part once more (the first of k folds of its own
  patients) for early stopping, so the held-out fold never steers training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from petscan.utils.errors import ParamsError

Fold = tuple[np.ndarray, np.ndarray]  # (training indices, held-out indices) into the pool


def patient_groups(frame: pd.DataFrame) -> np.ndarray:
    """A manifest's patient ids (`patient` column), else one group per image (`path`)."""
    column = "patient" if "patient" in frame.columns else "path"
    return frame[column].astype(str).to_numpy()


def pool_splits(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_groups: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train + val as one pool `(x (N+M, V, D), y, groups)`; val's view 0 repeated to V views
    (val has no augmented views), so view 0 of every pooled row is the plain image."""
    val = np.repeat(np.asarray(val_x)[:, :1], train_x.shape[1], axis=1)
    x = np.concatenate([np.asarray(train_x), val])
    y = np.concatenate([train_y, val_y])
    groups = np.concatenate([train_groups, val_groups])
    return x, y, groups


def patient_folds(
    labels: np.ndarray, groups: np.ndarray, k: int, seed: int, setting: str = "tune.cv_folds"
) -> list[Fold]:
    """StratifiedGroupKFold (shuffled, seeded) folds; patients never straddle a fold.

    `k` >= 2 (the schema checks `setting`, the params key named in errors); the data must
    have k patients and every class in each fold's training part, else `ParamsError`.
    Every index is held out by exactly one fold.
    """
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ParamsError(f"{setting}={k} but only {n_groups} patients")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    classes = np.unique(labels)
    for i, (train_idx, _) in enumerate(folds):
        if len(np.unique(labels[train_idx])) != len(classes):
            raise ParamsError(f"cv fold {i} lacks a class in its training part: lower {setting}")
    return folds


def inner_split(
    indices: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    k: int,
    seed: int,
    setting: str = "train.folds",
) -> Fold:
    """`indices` (a fold's training part) cut into (fit, early-stopping) parts by patient:
    the first of `patient_folds(k)` over those images (about 1/k of them stop early)."""
    fit, stop = patient_folds(labels[indices], groups[indices], k, seed, setting)[0]
    return indices[fit], indices[stop]
