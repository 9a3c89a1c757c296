"""`train.protocol: cv` through the real pipeline (`dvc repro`), tiny: the fold ensemble is
the saved model, every train + val image has one out-of-fold prediction, `metrics.json`
has the `oof` split with fold mean and sd, and the test split was scored once."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_pipeline import dvc, tiny_repo


@pytest.mark.slow
def test_dvc_repro_with_the_cv_protocol(tmp_path):
    def cv(params: dict) -> None:
        params["train"].update(protocol="cv", folds=2)

    root, env = tiny_repo(tmp_path / "repo", cv)
    dvc(root, env, "repro", "evaluate")
    split = root / "data" / "split"
    pool = pd.concat([pd.read_csv(split / "train.csv"), pd.read_csv(split / "val.csv")])
    oof = pd.read_csv(root / "models" / "cv" / "oof.csv")
    assert list(oof["path"]) == list(pool["path"])  # every train + val image, once, in order
    assert sorted(oof["fold"].unique()) == [0, 1]
    test_paths = set(pd.read_csv(split / "test.csv")["path"])
    assert not test_paths & set(oof["path"])  # test never in the folds
    for f in (0, 1):  # patients never straddle folds
        held = set(oof.loc[oof["fold"] == f, "patient"])
        assert not held & set(oof.loc[oof["fold"] != f, "patient"])
    protocol = json.loads((root / "models" / "cv" / "protocol.json").read_text())
    assert protocol["protocol"] == "cv" and protocol["folds"] == 2
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    row = metrics["oof"]
    assert {"accuracy", "accuracy_low", "accuracy_high", "accuracy_fold_sd"} <= set(row)
    assert metrics["random_init"] is True  # the tiny random-init backbone stays labelled
    full = json.loads((root / "reports" / "metrics_full.json").read_text())
    assert full["oof"]["n"] == len(pool) and full["test"]["n"] == len(test_paths)
    assert np.isfinite(full["test"]["ece_uncalibrated"])

    from petscan.model.saving import load_model

    model = load_model(root / "models" / "model.keras")  # safe_mode=True
    names = {layer.name for layer in model.layers}
    assert {"fold_0", "fold_1", "fold_mean", "temperature"} <= names
