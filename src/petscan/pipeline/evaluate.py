"""Evaluating the saved model on image files: the `evaluate` stage's library.

The saved `model.keras` (image -> probabilities) is run on the val and test image
files named in the split manifests, not on cached features, so what is measured is
exactly what `petscan predict` would answer. Per split it writes a predictions CSV
(one row per image), a classification report and the metrics of
`petscan.evaluation.metrics.evaluate_predictions` (bootstrap intervals resampled by patient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from petscan.data.tf_data import image_dataset
from petscan.evaluation import metrics
from petscan.handoff.records import read_train_info
from petscan.handoff.results import predictions_frame, write_metrics
from petscan.model import losses
from petscan.model import network as pmodel
from petscan.params import loading as config
from petscan.tracking import runs as tracking
from petscan.utils import io
from petscan.utils.errors import BadInputError


def predict_images(
    model: keras.Model,
    frame: pd.DataFrame,
    model_params: dict[str, Any],
    batch_size: int,
    root: str | Path = ".",
) -> np.ndarray:
    """Class probabilities (N, K) for the images listed in a manifest frame, in its order."""
    if len(frame) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    dataset = image_dataset(
        frame,
        tuple(model_params["input_size"]),
        model_params["resize"],
        int(batch_size),
        shuffle=False,
        root=str(root),
    )
    proba = model.predict(dataset.map(lambda images, labels: images), verbose=0)
    if len(proba) != len(frame):
        raise RuntimeError(f"model returned {len(proba)} predictions for {len(frame)} images")
    return np.asarray(proba, dtype=np.float64)


def loss_value(
    y_true: np.ndarray, proba: np.ndarray, loss_params: dict[str, Any], num_classes: int
) -> float:
    """The training loss (`train.loss`, unweighted) of the predictions."""
    if len(y_true) == 0:
        return float("nan")
    loss = losses.make_loss(loss_params, num_classes)
    value = loss(np.asarray(y_true, dtype=np.int32), np.asarray(proba, dtype=np.float32))
    return float(keras.ops.convert_to_numpy(value))


def split_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    groups: np.ndarray | None,
    class_names: Sequence[str],
    loss_params: dict[str, Any],
    evaluate_params: dict[str, Any],
) -> dict[str, float | int]:
    """`loss` + `metrics.evaluate_predictions` (bootstrap by patient when `groups`)."""
    values = {"loss": loss_value(y_true, proba, loss_params, len(class_names))}
    values.update(
        metrics.evaluate_predictions(
            y_true,
            proba,
            list(class_names),
            groups=groups,
            n_resamples=int(evaluate_params["bootstrap_resamples"]),
            confidence=float(evaluate_params["confidence"]),
            ece_bins=int(evaluate_params["ece_bins"]),
            seed=int(evaluate_params["seed"]),
        )
    )
    return values


def evaluate_split(
    model: keras.Model,
    manifest: str | Path,
    split: str,
    class_names: Sequence[str],
    model_params: dict[str, Any],
    loss_params: dict[str, Any],
    evaluate_params: dict[str, Any],
    out_dir: str | Path,
    root: str | Path = ".",
) -> tuple[dict[str, float], dict[str, Path]]:
    """Predict one split's images; write its predictions CSV and classification report."""
    frame = pd.read_csv(manifest, dtype={"patient": str})
    if len(frame) == 0:
        raise BadInputError(f"{manifest} lists no images: re-run `dvc repro split` with more data")
    proba = predict_images(model, frame, model_params, evaluate_params["batch_size"], root)
    y_true = frame["label"].to_numpy(dtype=int)
    out_dir = Path(out_dir)
    paths = {
        "predictions": out_dir / f"predictions_{split}.csv",
        "report": out_dir / f"classification_report_{split}.txt",
    }
    io.write_csv(paths["predictions"], predictions_frame(frame, proba, class_names))
    io.write_text(
        paths["report"],
        metrics.classification_report_text(y_true, np.argmax(proba, axis=1), list(class_names)),
    )
    groups = frame["patient"].astype(str).to_numpy()
    values = split_metrics(y_true, proba, groups, class_names, loss_params, evaluate_params)
    values["majority_prediction_share"] = majority_share(proba)
    return values, paths


def majority_share(proba: np.ndarray) -> float:
    """Share of the images predicted as the most often predicted class (1.0: one class)."""
    predicted = np.argmax(proba, axis=1)
    return float(np.bincount(predicted).max() / len(predicted)) if len(predicted) else math.nan


def mlflow_metrics(nested: dict[str, Any]) -> dict[str, float]:
    """`{"test": {"accuracy": x}}` -> `{"test/accuracy": x}` (finite numbers only)."""
    flat: dict[str, float] = {}
    for split, values in nested.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if isinstance(value, int | float) and np.isfinite(value):
                flat[f"{split}/{name}"] = float(value)
    return flat


def run_evaluate(
    params: dict[str, Any], root: str | Path = ".", splits: Sequence[str] = ("val", "test")
) -> dict[str, Any]:
    """The `evaluate` stage: predictions, reports and `metrics.json`; log to the train run.

    `params` holds the sections `data`, `model`, `train`, `evaluate`, `mlflow` and
    `split` (for `split.out_dir`). Returns the nested metrics written to metrics.json.
    """
    root = Path(root)
    class_names = config.class_names(params["data"])
    train_dir = root / params["train"]["out_dir"]
    out_dir = root / params["evaluate"]["out_dir"]
    split_dir = root / params["split"]["out_dir"]
    info = read_train_info(train_dir)
    model = pmodel.load_model(train_dir / "model.keras")
    results: dict[str, Any] = {
        **info.weights.to_dict(),
        # the train stage's alarm (check_collapse), without its sentence
        "collapse": {k: v for k, v in info.collapse.items() if k != "message"},
    }
    files: list[Path] = []
    for split in splits:
        values, paths = evaluate_split(
            model,
            split_dir / f"{split}.csv",
            split,
            class_names,
            params["model"],
            params["train"]["loss"],
            params["evaluate"],
            out_dir,
            root,
        )
        results[split] = values
        files.extend(paths.values())
    metrics_path, full_path = write_metrics(out_dir, results)
    run_id = tracking.training_run_id(info.model_sha256, params["mlflow"])
    with tracking.resumed_run(run_id, params["mlflow"]) as run:
        if run is not None:
            tracking.log_stage_params(run.info.run_id, {"evaluate": params["evaluate"]})
            mlflow.log_metrics(mlflow_metrics(results))
            for path in [metrics_path, full_path, *files]:
                mlflow.log_artifact(str(path), artifact_path="reports")
            tracking.describe_model_version(run.info.run_id, params["mlflow"], results)
    return results
