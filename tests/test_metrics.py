"""Evaluation metrics, calibration and bootstrap intervals (petscan.evaluation.metrics)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from petscan.evaluation.metrics import (
    binary_auc,
    bootstrap_distribution,
    brier_score,
    classification_report_text,
    confusion,
    evaluate_predictions,
    expected_calibration_error,
    percentile_interval,
    reliability_curve,
)

NAMES = ["No cancer", "Breast cancer", "Prostate cancer"]


def random_predictions(n=200, k=3, seed=0, skill=1.5):
    """Labels and softmax probabilities that are informative but imperfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + skill * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


@pytest.fixture(scope="module")
def report():
    y, p = random_predictions()
    return y, p, evaluate_predictions(y, p, NAMES, n_resamples=200, seed=1)


# ------------------------------------------------------------------ against scikit-learn


def test_overall_metrics_match_sklearn(report):
    y, p, r = report
    pred = p.argmax(axis=1)
    assert r["n"] == 200
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert r["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert r["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert r["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert r["roc_auc_macro"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    onehot = label_binarize(y, classes=[0, 1, 2])
    assert r["average_precision_macro"] == pytest.approx(
        skm.average_precision_score(onehot, p, average="macro")
    )
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]))
    assert r["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1, 2]))


def test_per_class_metrics_match_sklearn(report):
    y, p, r = report
    pred = p.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    auc = skm.roc_auc_score(label_binarize(y, classes=[0, 1, 2]), p, average=None)
    ap = skm.average_precision_score(label_binarize(y, classes=[0, 1, 2]), p, average=None)
    for c, name in enumerate(NAMES):
        assert r[f"precision/{name}"] == pytest.approx(precision[c])
        assert r[f"recall/{name}"] == pytest.approx(recall[c])
        assert r[f"f1/{name}"] == pytest.approx(f1[c])
        assert r[f"support/{name}"] == support[c] and type(r[f"support/{name}"]) is int
        assert r[f"roc_auc/{name}"] == pytest.approx(auc[c])
        assert r[f"average_precision/{name}"] == pytest.approx(ap[c])
        # specificity = recall of the negatives in a one-vs-rest split
        assert r[f"specificity/{name}"] == pytest.approx(skm.recall_score(y != c, pred != c))


def test_binary_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(3)
    positive = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * positive, 1)  # many tied scores
    assert binary_auc(positive, scores) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert math.isnan(binary_auc(np.ones(5, bool), scores[:5]))


def test_confusion_and_report_text():
    y, p = random_predictions(n=50, seed=4)
    pred = p.argmax(axis=1)
    np.testing.assert_array_equal(
        confusion(y, pred, 3), skm.confusion_matrix(y, pred, labels=[0, 1, 2])
    )
    text = classification_report_text(y, pred, NAMES)
    assert all(name in text for name in NAMES) and "macro avg" in text
    assert f"{skm.accuracy_score(y, pred):.4f}" in text


# ------------------------------------------------------------------ by hand


def test_specificity_and_brier_by_hand():
    # true:      0 0 0 1 1 2 2 2
    # predicted: 0 0 1 1 2 2 2 0       confusion (rows true, cols predicted):
    #   [[2 1 0]
    #    [0 1 1]
    #    [1 0 2]]
    # class 0: TP 2, FP 1 (true 2 -> 0), FN 1, TN 8-2-1-1 = 4 -> specificity 4/5 = 0.8
    # class 1: TP 1, FP 1, FN 1, TN 5 -> 5/6;  class 2: TP 2, FP 1, FN 1, TN 4 -> 4/5
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(confusion(y, pred, 3), [[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    p = np.full((8, 3), 0.2)
    p[np.arange(8), pred] = 0.6
    r = evaluate_predictions(y, p, NAMES, n_resamples=0)
    assert r["specificity/No cancer"] == pytest.approx(0.8)
    assert r["specificity/Breast cancer"] == pytest.approx(5 / 6)
    assert r["specificity/Prostate cancer"] == pytest.approx(0.8)
    assert r["recall/No cancer"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(5 / 8)
    # Brier, per sample sum_c (p_c - y_c)^2: right (0.4^2 + 0.2^2 + 0.2^2) = 0.24,
    # wrong (0.8^2 + 0.6^2 + 0.2^2) = 1.04; 5 right, 3 wrong: (5*0.24 + 3*1.04) / 8 = 0.54
    assert r["brier"] == pytest.approx(0.54)
    assert brier_score(y, p) == pytest.approx(0.54)


# ------------------------------------------------------------------ calibration


def test_ece_perfectly_calibrated_is_zero():
    # 10 images at confidence 0.8 with 8 right, 5 at 0.6 with 3 right.
    p = np.array([[0.8, 0.1, 0.1]] * 10 + [[0.6, 0.3, 0.1]] * 5)
    y = np.array([0] * 8 + [1] * 2 + [0] * 3 + [2] * 2)
    assert expected_calibration_error(y, p, 10) == pytest.approx(0.0, abs=1e-12)


def test_ece_all_confident_half_wrong_is_half():
    p = np.array([[1.0, 0.0, 0.0]] * 6)
    y = np.array([0, 1, 0, 2, 0, 1])
    assert expected_calibration_error(y, p, 10) == pytest.approx(0.5)


def test_ece_two_bins_by_hand():
    # bin [0.5, 1]: 4 images at 0.9, 3 right -> |0.75 - 0.9| = 0.15, weight 4/6
    # bin [0, 0.5): 2 images at 0.4, 1 right -> |0.5 - 0.4| = 0.10, weight 2/6
    # ECE = 4/6 * 0.15 + 2/6 * 0.10 = 0.1 + 0.0333 = 0.13333
    p = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.4, 0.35, 0.25]] * 2)
    y = np.array([0, 0, 0, 1, 0, 2])
    assert expected_calibration_error(y, p, 2) == pytest.approx(0.4 / 3)
    conf, acc, count = reliability_curve(y, p, 2)
    np.testing.assert_allclose(conf, [0.4, 0.9])
    np.testing.assert_allclose(acc, [0.5, 0.75])
    np.testing.assert_array_equal(count, [2, 4])
    conf, acc, count = reliability_curve(y, p, 10)
    assert count.sum() == 6 and np.isnan(conf[0]) and count[9] == 4


# ------------------------------------------------------------------ bootstrap


def accuracy(y, p):
    return float(np.mean(p.argmax(axis=1) == y))


def bootstrap_ci(stat_fn, y, p, groups=None, n_resamples=1000, confidence=0.95, seed=0):
    """Percentile bootstrap interval `(low, high)` of a scalar `stat_fn(y, p)`."""
    values = bootstrap_distribution(stat_fn, y, p, groups, n_resamples, seed)
    low, high, _ = percentile_interval(values["value"], confidence)
    return low, high


def test_bootstrap_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (50, 500, 5000):
        y, p = random_predictions(n=n, seed=n)
        low, high = bootstrap_ci(accuracy, y, p, n_resamples=300, confidence=0.95, seed=0)
        assert low <= accuracy(y, p) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # close to the normal approximation 2 * 1.96 * sqrt(a (1 - a) / n) at n = 500
    y, p = random_predictions(n=500, seed=500)
    a = accuracy(y, p)
    assert widths[1] == pytest.approx(2 * 1.96 * math.sqrt(a * (1 - a) / 500), rel=0.25)


def test_bootstrap_is_deterministic_per_seed():
    y, p = random_predictions(n=80, seed=7)
    assert bootstrap_ci(accuracy, y, p, n_resamples=100, seed=3) == bootstrap_ci(
        accuracy, y, p, n_resamples=100, seed=3
    )


def test_group_bootstrap_wider_when_groups_are_large():
    # 20 patients x 10 images; a patient's images are all right or all wrong, so
    # there are only 20 independent outcomes, not 200.
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i:02d}" for i in range(20)], 10)
    y = np.repeat(rng.integers(0, 3, size=20), 10)
    right = np.repeat(np.arange(20) % 2 == 0, 10)
    pred = np.where(right, y, (y + 1) % 3)
    p = np.full((200, 3), 0.1)
    p[np.arange(200), pred] = 0.8
    low_i, high_i = bootstrap_ci(accuracy, y, p, n_resamples=400, seed=0)
    low_g, high_g = bootstrap_ci(accuracy, y, p, groups=groups, n_resamples=400, seed=0)
    assert low_g <= 0.5 <= high_g and low_i <= 0.5 <= high_i
    # ~ 2 * 1.96 * sqrt(.25 / 200) = 0.14 for images vs sqrt(.25 / 20) * 3.92 = 0.44 for patients
    assert (high_g - low_g) > 2 * (high_i - low_i)
    r = evaluate_predictions(y, p, NAMES, groups=groups, n_resamples=200, seed=0)
    assert r["n_groups"] == 20


def test_undefined_resamples_are_skipped_and_counted():
    # One image of class 2 in 30: about (29/30)^30 = 36% of resamples lack it.
    y = np.array([0] * 15 + [1] * 14 + [2])
    p = np.full((30, 3), 0.25)
    p[np.arange(30), y] = 0.5
    r = evaluate_predictions(y, p, NAMES, n_resamples=400, seed=0)
    skipped = r["roc_auc_macro_ci_skipped"]
    assert 0.25 * 400 < skipped < 0.5 * 400
    assert r["recall/Prostate cancer_ci_skipped"] == skipped
    assert r["accuracy_ci_skipped"] == 0
    assert r["accuracy_ci_low"] == r["accuracy_ci_high"] == 1.0


# ------------------------------------------------------------------ the report


def test_report_is_flat_plain_and_has_stable_names(report):
    y, p, r = report
    for key, value in r.items():
        assert type(value) in (float, int), key
        assert re.fullmatch(r"[A-Za-z0-9_\-. /]+", key), key  # MLflow metric-name charset
    json.dumps(r, allow_nan=False)
    for name in (
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "roc_auc_macro",
        "recall/Breast cancer",
        "specificity/Prostate cancer",
    ):
        assert r[f"{name}_ci_low"] <= r[name] <= r[f"{name}_ci_high"], name
    for key in ("ece", "log_loss", "brier", "f1_weighted", "average_precision/No cancer"):
        assert key in r
    assert r["bootstrap_resamples"] == 200


def test_bootstrap_uses_patient_groups_of_the_report():
    y, p = random_predictions(n=60, seed=9)
    groups = np.repeat(np.arange(6), 10)
    a = evaluate_predictions(y, p, NAMES, groups=groups, n_resamples=100, seed=0)
    b = evaluate_predictions(y, p, NAMES, n_resamples=100, seed=0)
    assert a["accuracy"] == b["accuracy"]
    assert a["accuracy_ci_low"] != b["accuracy_ci_low"]


@pytest.mark.parametrize(
    "y, p, message",
    [
        ([0, 1], np.array([[0.5, 0.5, 0.0]]), "shapes"),
        ([0, 3], np.array([[1.0, 0, 0], [0, 1.0, 0]]), r"lie in 0..2"),
        ([0, 1], np.array([[0.9, 0.9, 0.0], [0, 1.0, 0]]), "sum to 1"),
        ([0, 1], np.array([[np.nan, 1.0, 0.0], [0, 1.0, 0]]), "finite"),
        ([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]), "2 columns for 3 class names"),
    ],
)
def test_input_errors(y, p, message):
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(np.array(y), p, NAMES, n_resamples=0)


def test_ece_has_a_bootstrap_interval_like_a_hand_rolled_one():
    """ECE's interval: the same resamples (seeded), ECE written out here with NumPy."""
    y, p = random_predictions(n=80, seed=4)
    r = evaluate_predictions(y, p, NAMES, n_resamples=300, ece_bins=5, seed=3)

    def numpy_ece(yb, pb, bins=5):
        conf, hit = pb.max(axis=1), (pb.argmax(axis=1) == yb).astype(float)
        which = np.minimum((conf * bins).astype(int), bins - 1)
        return sum(
            (which == b).mean() * abs(hit[which == b].mean() - conf[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        )

    rng = np.random.default_rng(3)
    values = [numpy_ece(y[i], p[i]) for i in (rng.integers(0, 80, 80) for _ in range(300))]
    assert r["ece_ci_low"] == pytest.approx(np.percentile(values, 2.5))
    assert r["ece_ci_high"] == pytest.approx(np.percentile(values, 97.5))
    assert r["ece_ci_low"] < r["ece_ci_high"] and r["ece_ci_skipped"] == 0
