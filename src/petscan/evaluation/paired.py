"""Is model A better than model B on the same images? Paired tests.

* `paired_bootstrap`: each headline metric (`COMPARED`) of A and B, their difference
  `A - B` and its percentile interval, from the same resamples of whole patients for both
  models (`metrics.resample_indices`), so the patients' difficulty cancels out. The
  difference is "distinguishable from zero" when the interval excludes 0.
* `delong`: DeLong, DeLong & Clarke-Pearson (Biometrics 1988) test of two correlated ROC
  AUCs on the same images, one class against the rest; the fast form of Sun & Xu (IEEE
  Signal Process. Lett. 2014), midranks for ties. It treats images as independent (views
  of one patient are not), so the patient bootstrap is the primary answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from petscan.evaluation import metrics

COMPARED = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ece")


def _compared(y: np.ndarray, p: np.ndarray, class_names: list[str], ece_bins: int) -> dict:
    values = metrics.headline_metrics(y, p, class_names, ece_bins)
    return {k: values[k] for k in COMPARED}


def paired_bootstrap(
    y: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    class_names: Sequence[str],
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ece_bins: int = 10,
) -> dict[str, dict[str, float]]:
    """Per metric of `COMPARED`: `a`, `b`, `difference` (a - b), `low`, `high` (the
    percentile interval of the difference over patient resamples drawn once for both),
    `skipped` (resamples where the metric was undefined) and `distinguishable` (0 outside
    the interval). `y` (N,) integer labels; `proba_a`, `proba_b` (N, K) on the same images."""
    names = list(class_names)
    y = np.asarray(y)
    a_all, b_all = np.asarray(proba_a), np.asarray(proba_b)
    point_a, point_b = _compared(y, a_all, names, ece_bins), _compared(y, b_all, names, ece_bins)
    diffs: dict[str, list[float]] = {k: [] for k in COMPARED}
    for idx in metrics.resample_indices(len(y), groups, n_resamples, seed):
        try:
            va = _compared(y[idx], a_all[idx], names, ece_bins)
            vb = _compared(y[idx], b_all[idx], names, ece_bins)
        except ValueError:
            va, vb = {}, {}
        for k in COMPARED:
            diffs[k].append(va.get(k, math.nan) - vb.get(k, math.nan))
    out = {}
    for k in COMPARED:
        low, high, skipped = metrics.percentile_interval(np.array(diffs[k]), confidence)
        out[k] = {
            "a": float(point_a[k]),
            "b": float(point_b[k]),
            "difference": float(point_a[k] - point_b[k]),
            "low": low,
            "high": high,
            "skipped": skipped,
            "distinguishable": bool(low > 0 or high < 0),
        }
    return out


def _placements(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive the share of negatives it beats
    (ties count half), and for each negative the share of positives that beat it."""
    m, n = len(positive), len(negative)
    both = np.concatenate([positive, negative])
    ranks = rankdata(both)  # midranks
    v10 = (ranks[:m] - rankdata(positive)) / n
    v01 = 1.0 - (ranks[m:] - rankdata(negative)) / m
    return v10, v01


def delong(positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUC(a) = AUC(b) on the same images: `positive` (N,) booleans, the
    two models' scores (N,). Returns `auc_a`, `auc_b`, `difference`, `se`, `z`, `p_value`."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("DeLong's test needs positive and negative images")
    comps = [_placements(s[positive], s[~positive]) for s in (scores_a, scores_b)]
    aucs = np.array([v10.mean() for v10, _ in comps])
    s10 = np.cov(np.stack([v10 for v10, _ in comps]))
    s01 = np.cov(np.stack([v01 for _, v01 in comps]))
    cov = s10 / positive.sum() + s01 / (~positive).sum()
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": float(z),
        "p_value": float(2 * norm.sf(abs(z))),
    }


def delong_per_class(
    y: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`delong` one class against the rest, for each class present with both outcomes."""
    out = {}
    for c, name in enumerate(class_names):
        positive = np.asarray(y) == c
        if positive.any() and not positive.all():
            out[name] = delong(positive, np.asarray(proba_a)[:, c], np.asarray(proba_b)[:, c])
    return out
