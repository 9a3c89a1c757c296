"""Evaluating the saved model on image files: the `evaluate` stage's library.

The saved `model.keras` (image -> probabilities) is run on the val and test image
files named in the split manifests, not on cached features, so what is measured is
exactly what `petscan predict` would answer. Per split it writes a predictions CSV
(one row per image), a classification report and the metrics of
`petscan.metrics.evaluate_predictions` (bootstrap intervals resampled by patient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from petscan import io, losses, metrics

PROBA_PREFIX = "proba/"
TRUE_COLUMN = "true_class"
PRED_COLUMN = "predicted_class"


def proba_columns(class_names: Sequence[str]) -> list[str]:
    """Column names of the per-class probabilities in a predictions CSV."""
    return [f"{PROBA_PREFIX}{name}" for name in class_names]


def predict_images(
    model: keras.Model,
    frame: pd.DataFrame,
    model_params: dict[str, Any],
    batch_size: int,
    root: str | Path = ".",
) -> np.ndarray:
    """Class probabilities (N, K) for the images listed in a manifest frame, in its order."""
    from petscan import features as pfeatures

    if len(frame) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    dataset = pfeatures.image_dataset(
        frame,
        tuple(model_params["input_size"]),
        model_params.get("resize", "stretch"),
        int(batch_size),
        shuffle=False,
        root=str(root),
    )
    proba = model.predict(dataset.map(lambda images, labels: images), verbose=0)
    if len(proba) != len(frame):
        raise RuntimeError(f"model returned {len(proba)} predictions for {len(frame)} images")
    return np.asarray(proba, dtype=np.float64)


def predictions_frame(
    frame: pd.DataFrame, proba: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """path, patient, true class, one probability column per class, predicted class."""
    predicted = np.argmax(proba, axis=1)
    out = pd.DataFrame(
        {
            "path": frame["path"].to_numpy(),
            "patient": frame["patient"].astype(str).to_numpy(),
            "label": frame["label"].to_numpy(dtype=int),
            TRUE_COLUMN: [class_names[i] for i in frame["label"].to_numpy(dtype=int)],
        }
    )
    for column, values in zip(proba_columns(class_names), proba.T, strict=True):
        out[column] = values
    out["predicted_label"] = predicted
    out[PRED_COLUMN] = [class_names[i] for i in predicted]
    return out


def read_predictions(
    path: str | Path, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(integer labels, probabilities (N, K), frame) from a predictions CSV."""
    frame = pd.read_csv(path, dtype={"patient": str})
    columns = proba_columns(class_names)
    missing = [c for c in ["label", *columns] if c not in frame]
    if missing:
        raise ValueError(
            f"{path} lacks columns {missing}: it was written for other classes; "
            f"re-run `dvc repro evaluate`"
        )
    return frame["label"].to_numpy(dtype=int), frame[columns].to_numpy(dtype=float), frame


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
            n_resamples=int(evaluate_params.get("bootstrap_resamples", 1000)),
            confidence=float(evaluate_params.get("confidence", 0.95)),
            ece_bins=int(evaluate_params.get("ece_bins", 10)),
            seed=int(evaluate_params.get("seed", 0)),
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
        raise ValueError(f"{manifest} lists no images: re-run `dvc repro split` with more data")
    proba = predict_images(model, frame, model_params, evaluate_params.get("batch_size", 32), root)
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


def banner_text(train_info: dict[str, Any]) -> str | None:
    """The warning stamped on figures of a random-init backbone (from train.json), else None."""
    from petscan.weights import warning_banner

    return warning_banner(
        {"random_init": train_info.get("random_init"), "label": train_info.get("backbone_label")}
    )


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None, so metrics.json is strict JSON (DVC shows None as '-')."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = _json_safe(value)
        elif isinstance(value, float) and not np.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out


# The DVC metrics file (`dvc exp show`, `dvc metrics diff`): the numbers a reader compares,
# each with its bootstrap interval. Everything else goes to metrics_full.json and MLflow.
COMPACT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ece")


def compact_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """`random_init`, then per split each of `COMPACT_METRICS` with `_low` / `_high` bounds
    and `single_class_predictions` (the collapse alarm of that split).

    `{"random_init": true, "test": {"accuracy": 0.35, "accuracy_low": 0.19, ...}}`; the
    interval is the bootstrap one of `metrics.evaluate_predictions` (`<m>_ci_low/high`).
    """
    compact: dict[str, Any] = {"random_init": bool(results.get("random_init", False))}
    if isinstance(results.get("collapse"), dict) and "collapsed" in results["collapse"]:
        compact["collapse"] = {"collapsed": bool(results["collapse"]["collapsed"])}  # train's alarm
    for split, values in results.items():
        if not (isinstance(values, dict) and "accuracy" in values):
            continue  # not a split (e.g. the train stage's `collapse` record)
        row: dict[str, Any] = {}
        for name in COMPACT_METRICS:
            row[name] = values.get(name)
            row[f"{name}_low"] = values.get(f"{name}_ci_low")
            row[f"{name}_high"] = values.get(f"{name}_ci_high")
        if "majority_prediction_share" in values:  # the head predicts one class for every image
            row["single_class_predictions"] = bool(values["majority_prediction_share"] >= 1.0)
        compact[split] = row
    return compact


def read_train_info(train_dir: str | Path) -> dict[str, Any]:
    """`train.json` written by the train stage (run id, random_init, backbone label...)."""
    path = Path(train_dir) / "train.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train stage first (`dvc repro train`)")
    return io.read_json(path)


def run_evaluate(
    params: dict[str, Any], root: str | Path = ".", splits: Sequence[str] = ("val", "test")
) -> dict[str, Any]:
    """The `evaluate` stage: predictions, reports and `metrics.json`; log to the train run.

    `params` holds the sections `data`, `model`, `train`, `evaluate`, `mlflow` and
    `split` (for `split.out_dir`). Returns the nested metrics written to metrics.json.
    """
    import mlflow

    from petscan import config, tracking
    from petscan import model as pmodel

    root = Path(root)
    class_names = config.class_names(params["data"])
    train_dir = root / params["train"]["out_dir"]
    out_dir = root / params["evaluate"]["out_dir"]
    split_dir = root / params["split"]["out_dir"]
    info = read_train_info(train_dir)
    model = pmodel.load_model(train_dir / "model.keras")
    results: dict[str, Any] = {
        "random_init": bool(info.get("random_init", False)),
        "backbone": info.get("backbone"),
        "backbone_label": info.get("backbone_label"),
        # the train stage's alarm (check_collapse), without its sentence
        "collapse": {k: v for k, v in (info.get("collapse") or {}).items() if k != "message"},
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
    metrics_path, full_path = out_dir / "metrics.json", out_dir / "metrics_full.json"
    io.write_json(metrics_path, _json_safe(compact_metrics(results)))
    io.write_json(full_path, _json_safe(results))
    run_id = tracking.training_run_id(info.get("model_sha256"), params["mlflow"])
    with tracking.resumed_run(run_id, params["mlflow"]) as run:
        if run is not None:
            tracking.log_stage_params(run.info.run_id, {"evaluate": params["evaluate"]})
            mlflow.log_metrics(mlflow_metrics(results))
            for path in [metrics_path, full_path, *files]:
                mlflow.log_artifact(str(path), artifact_path="reports")
            tracking.describe_model_version(run.info.run_id, params["mlflow"], results)
    return results


FIGURES = ("confusion", "roc", "pr", "reliability")


def make_figures(params: dict[str, Any], root: str | Path = ".") -> list[Path]:
    """The `plot` stage: training curves and, per split, confusion / ROC / PR / reliability.

    `params` holds `data`, `plot`, `train.out_dir`, `evaluate` (out_dir, ece_bins) and
    `mlflow`. Figures of a random-init backbone carry the warning banner.
    """
    import mlflow

    from petscan import config, plots, tracking

    root = Path(root)
    class_names = config.class_names(params["data"])
    train_dir = root / params["train"]["out_dir"]
    reports = root / params["evaluate"]["out_dir"]
    fig_dir = root / params["plot"]["out_dir"]
    dpi = int(params["plot"].get("dpi", plots.DEFAULT_DPI))
    bins = int(params["evaluate"].get("ece_bins", 10))
    info = read_train_info(train_dir)
    banner = banner_text(info)
    history = pd.read_csv(train_dir / "history.csv")
    written = [fig_dir / "training_curves.png"]
    best = info.get("best_epoch")
    plots.training_curves(history, written[0], banner, dpi, None if best is None else int(best))
    for split in ("val", "test"):
        source = reports / f"predictions_{split}.csv"
        if not source.is_file():
            raise FileNotFoundError(f"{source} not found: run `dvc repro evaluate` first")
        y_true, proba, _ = read_predictions(source, class_names)
        out = {name: fig_dir / f"{name}_{split}.png" for name in FIGURES}
        plots.confusion_matrices(
            y_true, proba.argmax(axis=1), class_names, out["confusion"], banner, dpi
        )
        plots.roc_curves(y_true, proba, class_names, out["roc"], banner, dpi)
        plots.pr_curves(y_true, proba, class_names, out["pr"], banner, dpi)
        plots.reliability_diagram(y_true, proba, bins, out["reliability"], banner, dpi)
        written.extend(out.values())
    run_id = tracking.training_run_id(info.get("model_sha256"), params["mlflow"])
    with tracking.resumed_run(run_id, params["mlflow"]) as run:
        if run is not None:
            stage_params = {"plot": params["plot"], "evaluate": {"ece_bins": bins}}
            tracking.log_stage_params(run.info.run_id, stage_params)
            for path in written:
                mlflow.log_artifact(str(path), artifact_path="figures")
    return written
