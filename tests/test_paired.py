"""Paired comparison (`evaluation.paired`) against independent computations."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score

from petscan.evaluation.metrics import resample_indices
from petscan.evaluation.paired import delong, paired_bootstrap

NAMES = ["a", "b", "c"]


def _reference_delong(pos: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 from its definition: the kernel psi over every (positive, negative)
    pair with explicit loops, the placement values, their covariance matrices."""
    xs = [(s[pos], s[~pos]) for s in (a, b)]
    m, n = pos.sum(), (~pos).sum()
    v10 = np.zeros((2, m))
    v01 = np.zeros((2, n))
    for r, (x, yneg) in enumerate(xs):
        for i in range(m):
            for j in range(n):
                psi = 1.0 if x[i] > yneg[j] else 0.5 if x[i] == yneg[j] else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    s = np.cov(v10) / m + np.cov(v01) / n
    diff = v10[0].mean() - v10[1].mean()
    return diff, math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])


def test_delong_matches_the_definition_and_sklearn():
    rng = np.random.default_rng(0)
    pos = rng.random(80) < 0.4
    a = np.round(pos * 0.8 + rng.normal(size=80), 1)  # rounded: ties
    b = np.round(pos * 0.3 + rng.normal(size=80), 1)
    result = delong(pos, a, b)
    diff, se = _reference_delong(pos, a, b)
    assert math.isclose(result["auc_a"], roc_auc_score(pos, a), abs_tol=1e-12)
    assert math.isclose(result["auc_b"], roc_auc_score(pos, b), abs_tol=1e-12)
    assert math.isclose(result["difference"], diff, abs_tol=1e-12)
    assert math.isclose(result["se"], se, rel_tol=1e-9)
    assert 0 < result["p_value"] < 1
    same = delong(pos, a, a)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_delong_se_agrees_with_a_paired_bootstrap_on_large_data():
    rng = np.random.default_rng(1)
    n = 3000
    pos = rng.random(n) < 0.5
    a = pos * 1.0 + rng.normal(size=n)
    b = 0.6 * a + pos * 0.2 + rng.normal(size=n)  # correlated with a
    se = delong(pos, a, b)["se"]
    boot = []
    for idx in resample_indices(n, None, 400, seed=2):
        boot.append(roc_auc_score(pos[idx], a[idx]) - roc_auc_score(pos[idx], b[idx]))
    assert abs(np.std(boot) / se - 1) < 0.15


def test_paired_bootstrap_equals_a_loop_over_the_same_patient_resamples():
    rng = np.random.default_rng(3)
    n = 90
    groups = np.repeat(np.arange(30), 3)
    y = np.repeat(rng.integers(0, 3, 30), 3)
    pa = rng.dirichlet(np.ones(3), n)
    pa[np.arange(n), y] += 0.6  # A is informative
    pa /= pa.sum(1, keepdims=True)
    pb = rng.dirichlet(np.ones(3), n)  # B is noise
    out = paired_bootstrap(y, pa, pb, NAMES, groups, n_resamples=200, seed=5)
    diffs = []
    for idx in resample_indices(n, groups, 200, seed=5):  # the same resamples
        acc_a = accuracy_score(y[idx], pa[idx].argmax(1))
        diffs.append(acc_a - accuracy_score(y[idx], pb[idx].argmax(1)))
    low, high = np.percentile(diffs, [2.5, 97.5])
    acc = out["accuracy"]
    assert math.isclose(acc["low"], low) and math.isclose(acc["high"], high)
    expected = accuracy_score(y, pa.argmax(1)) - accuracy_score(y, pb.argmax(1))
    assert math.isclose(acc["difference"], expected)
    assert acc["distinguishable"] and out["roc_auc_macro"]["distinguishable"]
    auc = roc_auc_score(y, pa, multi_class="ovr", average="macro")
    assert math.isclose(out["roc_auc_macro"]["a"], auc, abs_tol=1e-12)
    # a model against itself: every difference is exactly 0, never distinguishable
    self_cmp = paired_bootstrap(y, pa, pa, NAMES, groups, n_resamples=50, seed=5)
    assert all(v["low"] == v["high"] == 0 and not v["distinguishable"] for v in self_cmp.values())
