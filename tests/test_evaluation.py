"""Evaluation: predictions from image files, the loss metric, the metrics logged to MLflow."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import manifest_row, tiny_model_params, write_manifest, write_png
from sklearn.metrics import accuracy_score, f1_score

from petscan.data.images import load_resized
from petscan.evaluation import predictions
from petscan.handoff import results
from petscan.model.network import build_full_model
from petscan.params.schema import section
from petscan.pipeline.evaluate import mlflow_metrics

MODEL = tiny_model_params(preprocessing="rescale", dropout=0.2)
FOCAL = {"name": "focal", "variant": "categorical", "alpha": [0.5, 0.3, 0.2], "gamma": 2.0}
EVALUATE = section(
    "evaluate",
    {"batch_size": 4, "bootstrap_resamples": 30, "confidence": 0.95, "ece_bins": 5, "seed": 0},
)


def loss_section(values: dict):
    """A `train.loss` section made from `values`, checked by the schema."""
    return section("train", {"loss": values}).loss


def write_split(root, n: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label = i % 3
        rel = f"data/raw/{CLASSES[label]}/pt-{i // 2:03d}_v{i % 2 + 1}.png"
        write_png(root / rel, rng.integers(0, 255, (30 + i, 28, 3), dtype=np.uint8))
        rows.append(manifest_row(rel, label, f"pt-{i // 2:03d}", "x"))
    return write_manifest(root / "data" / "split" / "test.csv", rows)


def test_loss_value_matches_hand_computed_crossentropy_and_focal():
    y = np.array([0, 1])
    proba = np.array([[0.5, 0.25, 0.25], [0.2, 0.8, 0.0]])
    ce = predictions.loss_value(y, proba, loss_section({"name": "crossentropy"}), 3)
    assert ce == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-5)
    focal = predictions.loss_value(y, proba, loss_section(FOCAL), 3)
    by_hand = (0.5 * 0.5**2 * -math.log(0.5) + 0.3 * 0.2**2 * -math.log(0.8)) / 2
    assert focal == pytest.approx(by_hand, rel=1e-5)


def test_mlflow_metrics_keep_finite_numbers():
    nested = {"random_init": True, "val": {"accuracy": 0.5, "auc": float("nan")}, "test": {"n": 3}}
    assert mlflow_metrics(nested) == {"val/accuracy": 0.5, "test/n": 3.0}


def test_evaluate_split_predicts_the_image_files_in_manifest_order(tmp_path):
    frame = write_split(tmp_path)
    model = build_full_model(MODEL, 3, None)
    values, paths = predictions.evaluate_split(
        model,
        tmp_path / "data" / "split" / "test.csv",
        "test",
        CLASSES,
        MODEL,
        loss_section(FOCAL),
        EVALUATE,
        tmp_path / "reports",
        root=tmp_path,
    )
    images = np.stack([load_resized(tmp_path / p, (32, 32)) for p in frame["path"]])
    expected = model.predict(images, verbose=0)
    y, proba, written = results.read_predictions(paths["predictions"], CLASSES)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    assert list(written["path"]) == list(frame["path"])
    predicted = proba.argmax(axis=1)
    assert values["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert values["f1_macro"] == pytest.approx(
        f1_score(y, predicted, average="macro", labels=[0, 1, 2], zero_division=0)
    )
    loss = predictions.loss_value(y, proba, loss_section(FOCAL), 3)
    assert values["loss"] == pytest.approx(loss, rel=1e-6)
    assert values["n_groups"] == frame["patient"].nunique()
    assert values["bootstrap_resamples"] == 30
    report = paths["report"].read_text()
    assert all(name in report for name in CLASSES)
