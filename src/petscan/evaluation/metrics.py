"""Evaluation metrics for one split, computed from predicted probabilities.

`evaluate_predictions` returns a flat dict of plain floats (ints for counts) under
stable names, ready for JSON, DVC metrics and MLflow:

* overall: `n`, `accuracy`, `balanced_accuracy` (mean per-class recall), `f1_macro`,
  `f1_weighted`, `precision_macro`, `recall_macro`, `roc_auc_macro`,
  `average_precision_macro`, `log_loss`, `brier`, `ece`, and `n_groups` when patient
  groups are given;
* per class `<c>`: `precision/<c>`, `recall/<c>` (sensitivity), `specificity/<c>`,
  `f1/<c>`, `support/<c>`, `roc_auc/<c>` (one-vs-rest), `average_precision/<c>`;
* bootstrap intervals for the headline metrics (`BOOTSTRAPPED`, ECE, per-class recall,
  specificity and ROC AUC): `<m>_ci_low`, `<m>_ci_high` and `<m>_ci_skipped` (resamples
  in which `<m>` was undefined, e.g. a class missing, and so left out).

Definitions. Precision of a class never predicted is 0 and F1 with no true or predicted
member is 0 (scikit-learn's `zero_division=0`). Recall, ROC AUC and average precision
of a class absent from `y_true`, and specificity with no negatives, are undefined: NaN.
Brier score (multi-class): mean over samples of `sum_c (p_c - y_c)**2`, in [0, 2].
Log loss: `-mean(log p_true)` with `p` clipped to float64 eps. ECE: top-label
confidence `max_c p_c` in `n_bins` equal-width bins `[0, 1/n), ..., [(n-1)/n, 1]`,
`sum_b (n_b / N) * |accuracy_b - mean confidence_b|`.
Bootstrap: percentile intervals; with `groups` whole patients are resampled (draw as
many groups as there are, with replacement, and take all their images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, classification_report
from tqdm.auto import tqdm

BOOTSTRAPPED = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_macro")
PER_CLASS_BOOTSTRAPPED = ("recall", "specificity", "roc_auc")
ROW_SUM_TOLERANCE = 1e-3

StatFn = Callable[[np.ndarray, np.ndarray], "float | Mapping[str, float]"]


# ----------------------------------------------------------------------------- inputs


def check_inputs(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated `(labels int64 (N,), probabilities float64 (N, K))`, rows renormalised."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or len(y) != len(p) or len(y) == 0:
        raise ValueError(
            f"expected labels (N,) and probabilities (N, K) with N > 0, got shapes "
            f"{y.shape} and {p.shape}"
        )
    k = p.shape[1] if num_classes is None else num_classes
    if p.shape[1] != k:
        raise ValueError(f"probabilities have {p.shape[1]} columns for {k} class names")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError("probabilities must be finite and in [0, 1] (softmax outputs)")
    sums = p.sum(axis=1)
    if np.max(np.abs(sums - 1.0)) > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"probability rows must sum to 1 (softmax outputs); worst row sums to "
            f"{sums[np.argmax(np.abs(sums - 1.0))]:.6f}"
        )
    return y.astype(np.int64), np.clip(p, 0.0, 1.0) / sums[:, None]


# ----------------------------------------------------------------------------- basics


def confusion(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """`(K, K)` int matrix, rows = true class, columns = predicted class."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def classification_report_text(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: list[str]
) -> str:
    """scikit-learn's text classification report (4 digits) over all classes."""
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """True/false positives/negatives per class (one-vs-rest) from a confusion matrix."""
    tp = np.diag(cm).astype(np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    tn = cm.sum() - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "support": support, "predicted": predicted}


def _confusion_metrics(cm: np.ndarray) -> dict[str, Any]:
    c = per_class_counts(cm)
    n = cm.sum()
    recall = _divide(c["tp"], c["support"], math.nan)
    f1 = _divide(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], 0.0)
    present = c["support"] > 0
    return {
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": float(np.mean(recall[present])),
        "f1_macro": float(np.mean(f1)),
        "f1_weighted": float(np.sum(f1 * c["support"]) / n),
        "precision": _divide(c["tp"], c["predicted"], 0.0),
        "recall": recall,
        "specificity": _divide(c["tn"], c["tn"] + c["fp"], math.nan),
        "f1": f1,
        "support": c["support"],
    }


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count one half); NaN if one class only."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_per_class(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of each class from its probability column."""
    return np.array([binary_auc(y == c, proba[:, c]) for c in range(proba.shape[1])])


def average_precision_per_class(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision (scikit-learn's step-wise definition) per class."""
    out = np.full(proba.shape[1], math.nan)
    for c in range(proba.shape[1]):
        if np.any(y == c):
            out[c] = average_precision_score(y == c, proba[:, c])
    return out


def log_loss(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log probability of the true class (p clipped to float64 eps)."""
    y, p = check_inputs(y_true, proba)
    eps = np.finfo(np.float64).eps
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def brier_score(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of `sum_c (p_c - y_c)**2` (0 best, 2 worst)."""
    y, p = check_inputs(y_true, proba)
    one_hot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - one_hot) ** 2, axis=1)))


# ----------------------------------------------------------------------------- calibration


def _top_label(y: np.ndarray, p: np.ndarray, n_bins: int):
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    return confidence, correct, bins


def reliability_curve(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean top-label confidence, accuracy and count.

    Empty bins have NaN confidence and accuracy and a count of 0.
    """
    y, p = check_inputs(y_true, proba)
    confidence, correct, bins = _top_label(y, p, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    bin_conf = _divide(np.bincount(bins, confidence, minlength=n_bins), count, math.nan)
    bin_acc = _divide(np.bincount(bins, correct, minlength=n_bins), count, math.nan)
    return bin_conf, bin_acc, count


def expected_calibration_error(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, n_bins: int
) -> float:
    """`sum_b (n_b / N) |accuracy_b - confidence_b|` over equal-width top-label bins."""
    bin_conf, bin_acc, count = reliability_curve(y_true, proba, n_bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(bin_acc[used] - bin_conf[used])) / count.sum())


# ----------------------------------------------------------------------------- bootstrap


def resample_indices(
    n: int, groups: Sequence[Any] | np.ndarray | None, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Bootstrap index arrays: images with replacement, or whole groups with replacement."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n, size=n)
        return
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} predictions")
    _, codes = np.unique(groups, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(codes))[:-1])
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        yield np.concatenate([members[g] for g in drawn])


def _as_mapping(value: float | Mapping[str, float]) -> Mapping[str, float]:
    return value if isinstance(value, Mapping) else {"value": value}


def bootstrap_distribution(
    stat_fn: StatFn,
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """`stat_fn(y, proba)` on each resample; a float stat is returned under `"value"`.

    A resample where the statistic is undefined (NaN, or `stat_fn` raises ValueError)
    gives NaN in the returned arrays.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba)
    indices = resample_indices(len(y), groups, n_resamples, seed)
    if progress:
        indices = tqdm(indices, total=n_resamples, desc="bootstrap", leave=False)
    rows: list[Mapping[str, float]] = []
    for idx in indices:
        try:
            rows.append(_as_mapping(stat_fn(y[idx], p[idx])))
        except ValueError:
            rows.append({})
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {k: np.array([float(row.get(k, math.nan)) for row in rows]) for k in names}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval of the finite values, and how many values were not finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    skipped = int(values.size - finite.size)
    if finite.size == 0:
        return math.nan, math.nan, skipped
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high), skipped


# ----------------------------------------------------------------------------- the report


def headline_metrics(
    y: np.ndarray, proba: np.ndarray, class_names: list[str], ece_bins: int = 10
) -> dict[str, float]:
    """The bootstrapped metrics (ECE too); NaN where undefined (a class missing from `y`)."""
    k = len(class_names)
    cm = confusion(y, proba.argmax(axis=1), k)
    m = _confusion_metrics(cm)
    auc = roc_auc_per_class(y, proba)
    all_present = bool(np.all(m["support"] > 0))
    out = {name: m[name] for name in BOOTSTRAPPED if name in m}
    if not all_present:
        out["balanced_accuracy"] = math.nan
    out["roc_auc_macro"] = float(np.mean(auc)) if all_present else math.nan
    out["ece"] = expected_calibration_error(y, proba, ece_bins)
    per_class = {"recall": m["recall"], "specificity": m["specificity"], "roc_auc": auc}
    for metric in PER_CLASS_BOOTSTRAPPED:
        for c, name in enumerate(class_names):
            out[f"{metric}/{name}"] = float(per_class[metric][c])
    return out


def point_metrics(
    y: np.ndarray, proba: np.ndarray, class_names: list[str], ece_bins: int = 10
) -> dict[str, float | int]:
    """Every metric (no intervals) on validated inputs."""
    k = len(class_names)
    m = _confusion_metrics(confusion(y, proba.argmax(axis=1), k))
    auc = roc_auc_per_class(y, proba)
    ap = average_precision_per_class(y, proba)
    present = m["support"] > 0
    out: dict[str, float | int] = {
        "n": len(y),
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "f1_macro": m["f1_macro"],
        "f1_weighted": m["f1_weighted"],
        "precision_macro": float(np.mean(m["precision"])),
        "recall_macro": float(np.mean(m["recall"])) if present.all() else math.nan,
        "roc_auc_macro": float(np.mean(auc)) if present.all() else math.nan,
        "average_precision_macro": float(np.mean(ap)) if present.all() else math.nan,
        "log_loss": log_loss(y, proba),
        "brier": brier_score(y, proba),
        "ece": expected_calibration_error(y, proba, ece_bins),
    }
    per_class = {
        "precision": m["precision"],
        "recall": m["recall"],
        "specificity": m["specificity"],
        "f1": m["f1"],
        "roc_auc": auc,
        "average_precision": ap,
    }
    for c, name in enumerate(class_names):
        for metric, values in per_class.items():
            out[f"{metric}/{name}"] = float(values[c])
        out[f"support/{name}"] = int(m["support"][c])
    return out


def evaluate_predictions(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    groups: Sequence[Any] | np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    ece_bins: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float | int]:
    """All metrics of one split plus bootstrap intervals of the headline ones.

    `groups` (e.g. the manifest's `patient` column) switches the bootstrap to whole
    patients. `n_resamples=0` skips the bootstrap (intervals NaN, all skipped = 0).
    """
    y, p = check_inputs(y_true, proba, len(class_names))
    out = point_metrics(y, p, list(class_names), ece_bins)
    if groups is not None:
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries for {len(y)} predictions")
        out["n_groups"] = int(len(np.unique(np.asarray(groups))))

    def stat(yb: np.ndarray, pb: np.ndarray) -> dict[str, float]:
        return headline_metrics(yb, pb, list(class_names), ece_bins)

    names = list(headline_metrics(y, p, list(class_names), ece_bins))
    dist = bootstrap_distribution(stat, y, p, groups, n_resamples, seed, progress)
    out["bootstrap_resamples"] = int(n_resamples)
    for name in names:
        low, high, skipped = percentile_interval(dist.get(name, np.array([])), confidence)
        out[f"{name}_ci_low"] = low
        out[f"{name}_ci_high"] = high
        out[f"{name}_ci_skipped"] = skipped
    return out
