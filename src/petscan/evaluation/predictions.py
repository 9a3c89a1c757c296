"""The saved model on one split's image files: predictions, their report and metrics.

The saved `model.keras` (image -> probabilities) is run on the image files named in a split
manifest, not on cached features, so what is measured is exactly what `petscan predict`
would answer. `evaluate_split` writes the split's predictions CSV (one row per image) and
classification report, and returns the training loss (`train.loss`, unweighted) and the
metrics of `metrics.evaluate_predictions` (bootstrap intervals resampled by patient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd

from petscan.data.tf_data import image_dataset
from petscan.evaluation import metrics
from petscan.handoff.results import predictions_frame
from petscan.model.losses import make_loss
from petscan.utils import io
from petscan.utils.errors import BadInputError

if TYPE_CHECKING:
    from petscan.params.learning import LossParams, ModelParams
    from petscan.params.results import EvaluateParams


def predict_images(
    model: keras.Model,
    frame: pd.DataFrame,
    model_params: ModelParams,
    batch_size: int,
    root: str | Path = ".",
) -> np.ndarray:
    """Class probabilities (N, K) for the images listed in a manifest frame, in its order."""
    if len(frame) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    dataset = image_dataset(
        frame,
        tuple(model_params.input_size),
        model_params.resize,
        batch_size,
        shuffle=False,
        root=str(root),
    )
    proba = model.predict(dataset.map(lambda images, labels: images), verbose=0)
    if len(proba) != len(frame):
        raise RuntimeError(f"model returned {len(proba)} predictions for {len(frame)} images")
    return np.asarray(proba, dtype=np.float64)


def loss_value(
    y_true: np.ndarray, proba: np.ndarray, loss_params: LossParams, num_classes: int
) -> float:
    """The training loss (`train.loss`, unweighted) of the predictions."""
    if len(y_true) == 0:
        return float("nan")
    loss = make_loss(loss_params, num_classes)
    value = loss(np.asarray(y_true, dtype=np.int32), np.asarray(proba, dtype=np.float32))
    return float(keras.ops.convert_to_numpy(value))


def split_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    groups: np.ndarray | None,
    class_names: Sequence[str],
    loss_params: LossParams,
    evaluate_params: EvaluateParams,
) -> dict[str, float | int]:
    """`loss` + `metrics.evaluate_predictions` (bootstrap by patient when `groups`)."""
    values = {"loss": loss_value(y_true, proba, loss_params, len(class_names))}
    values.update(
        metrics.evaluate_predictions(
            y_true,
            proba,
            list(class_names),
            groups=groups,
            n_resamples=evaluate_params.bootstrap_resamples,
            confidence=evaluate_params.confidence,
            ece_bins=evaluate_params.ece_bins,
            seed=evaluate_params.seed,
        )
    )
    return values


def evaluate_split(
    model: keras.Model,
    manifest: str | Path,
    split: str,
    class_names: Sequence[str],
    model_params: ModelParams,
    loss_params: LossParams,
    evaluate_params: EvaluateParams,
    out_dir: str | Path,
    root: str | Path = ".",
) -> tuple[dict[str, float], dict[str, Path]]:
    """Predict one split's images; write its predictions CSV and classification report."""
    frame = pd.read_csv(manifest, dtype={"patient": str})
    if len(frame) == 0:
        raise BadInputError(f"{manifest} lists no images: re-run `dvc repro split` with more data")
    proba = predict_images(model, frame, model_params, evaluate_params.batch_size, root)
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
