"""`petscan compare`: two runs' test predictions -> paired intervals, words, an MLflow run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from petscan.cli import compare as cmp
from petscan.params.schema import section
from petscan.utils.errors import BadInputError

CLASSES = {"a": "A", "b": "B", "c": "C"}


class _Params:
    def __init__(self, root=None):
        self.data = section("data", {"classes": CLASSES})
        self.evaluate = section("evaluate", {"bootstrap_resamples": 100})
        self.mlflow = section("mlflow", {"experiment": "cmp-test"})


def _frame(proba: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(y))], "label": y})
    frame["patient"] = [f"p{i // 2}" for i in range(len(y))]
    for c, name in enumerate(CLASSES.values()):
        frame[f"proba/{name}"] = proba[:, c]
    return frame


def test_compare_two_runs_logs_a_comparison_run(mlflow_store, mlflow_globals_restored):
    import mlflow

    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 3, 30), 2)
    good = np.full((60, 3), 0.1)
    good[np.arange(60), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 60)
    params = _Params(mlflow_store)
    from petscan.tracking.store import configure

    configure(params.mlflow)
    ids = []
    for proba in (good, noise):
        with mlflow.start_run(tags={"weights_label": "tiny test backbone"}) as run:
            mlflow.log_text(_frame(proba, y).to_csv(index=False), cmp.PREDICTIONS)
            ids.append(run.info.run_id)
    result = cmp.compare(ids[0], ids[1], params, mlflow_store)
    assert result["n_images"] == 60 and result["n_patients"] == 30
    acc = result["metrics"]["accuracy"]
    assert acc["a"] == 1.0 and acc["distinguishable"] and acc["low"] > 0
    text = cmp.report(result)
    assert "accuracy" in text and "distinguishable from zero" in text
    assert "tiny test backbone" in text
    run_id = cmp.log_comparison(result, params)
    logged = mlflow.MlflowClient().get_run(run_id).data
    assert logged.tags["compare.a_run_id"] == ids[0]
    assert logged.metrics["diff/accuracy"] == pytest.approx(acc["difference"])
    # the same run against itself: nothing is distinguishable
    same = cmp.report(cmp.compare(ids[0], ids[0], params, mlflow_store))
    assert "no difference between A and B is distinguishable" in same


def test_compare_refuses_different_test_images():
    y = np.zeros(4, int)
    p = np.full((4, 3), 1 / 3)
    a = cmp.Side("a", _frame(p, y))
    b = cmp.Side("b", _frame(p, y).assign(path=lambda f: f["path"] + "x"))
    with pytest.raises(BadInputError, match="different images"):
        cmp.aligned(a, b, list(CLASSES.values()))
