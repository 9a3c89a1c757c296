"""Scoring the cv protocol's out-of-fold predictions (`evaluation.out_of_fold`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from petscan.evaluation.out_of_fold import fold_table, oof_results, uncalibrate
from petscan.handoff.results import compact_metrics
from petscan.model.calibration import scale_probabilities
from petscan.params.schema import section

NAMES = ["A", "B", "C"]


def _oof(n: int = 90, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n // 2) % 3, 2)
    p = rng.dirichlet(np.ones(3), n)
    p[np.arange(n), y] += rng.uniform(0, 1, n)
    p /= p.sum(1, keepdims=True)
    frame = pd.DataFrame({"path": [f"i{i}" for i in range(n)], "label": y})
    frame["patient"] = [f"p{i // 2}" for i in range(n)]
    frame["fold"] = np.repeat(np.arange(n // 2) % 3, 2)
    for c, name in enumerate(NAMES):
        frame[f"proba/{name}"] = p[:, c]
        frame[f"calibrated_proba/{name}"] = scale_probabilities(p, 1.5)[:, c]
    return frame


def test_oof_metrics_are_pooled_with_fold_mean_and_sd():
    frame = _oof()
    evaluate = section("evaluate", {"bootstrap_resamples": 50})
    loss = section("train", {}).loss
    values, table = oof_results(frame, NAMES, loss, evaluate)
    y = frame["label"].to_numpy()
    p = frame[[f"proba/{n}" for n in NAMES]].to_numpy()
    assert math.isclose(values["accuracy"], accuracy_score(y, p.argmax(1)))
    assert math.isclose(values["roc_auc_macro"], roc_auc_score(y, p, multi_class="ovr"))
    assert values["n_groups"] == 45 and values["folds"] == 3
    per_fold = [accuracy_score(y[frame.fold == f], p[frame.fold == f].argmax(1)) for f in range(3)]
    assert math.isclose(values["accuracy_fold_mean"], np.mean(per_fold))
    assert math.isclose(values["accuracy_fold_sd"], np.std(per_fold, ddof=1))
    assert values["accuracy_ci_low"] <= values["accuracy"] <= values["accuracy_ci_high"]
    assert list(table["n"]) == [30, 30, 30]
    compact = compact_metrics({"oof": values})["oof"]  # what dvc exp show lists
    assert {"accuracy", "accuracy_low", "accuracy_fold_mean", "accuracy_fold_sd"} <= set(compact)
    assert "ece_calibrated" in values


def test_uncalibrate_inverts_the_temperature():
    p = np.random.default_rng(1).dirichlet(np.ones(3), 20)
    np.testing.assert_allclose(uncalibrate(scale_probabilities(p, 1.7), 1.7), p, atol=1e-9)
    assert fold_table(np.array([0, 1]), np.eye(3)[:2], np.array([0, 0]), NAMES, 10)["n"][0] == 2
