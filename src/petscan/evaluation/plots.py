"""The report figures, one PNG each, readable at a glance.

Every function draws on its own `matplotlib.figure.Figure` (no pyplot state, Agg
canvas), writes the PNG atomically and returns the figure so a caller or a test can
inspect it. `banner` stamps a loud red line on top of the figure, used for the random-init
backbone warning. ROC and PR curves come from the predicted
probabilities (one-vs-rest), never from argmax labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Ellipse
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from petscan.evaluation import metrics
from petscan.utils.io import atomic_path

DEFAULT_DPI = 130
BANNER_COLOR = "#d00000"
BANNER_HEIGHT = 0.5  # inches added on top of a figure for the banner


def _figure(width: float, height: float, banner: str | None) -> tuple[Figure, Figure | SubFigure]:
    """A figure and the (sub)figure to draw on; the banner gets its own strip on top."""
    if not banner:
        fig = Figure(figsize=(width, height), layout="constrained")
        return fig, fig
    fig = Figure(figsize=(width, height + BANNER_HEIGHT), layout="constrained")
    strip, body = fig.subfigures(2, 1, height_ratios=[BANNER_HEIGHT, height])
    strip.text(
        0.5,
        0.5,
        banner,
        ha="center",
        va="center",
        color=BANNER_COLOR,
        fontsize=min(13.0, width * 72 / (0.7 * max(len(banner), 1))),
        fontweight="bold",
        bbox={"facecolor": "#fff0f0", "edgecolor": BANNER_COLOR, "boxstyle": "round"},
    )
    return fig, body


def _save(fig: Figure, out: str | Path, dpi: int) -> Figure:
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return fig


# --------------------------------------------------------------------------- training


def training_curves(
    history: pd.DataFrame,
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
    best_epoch: int | None = None,
) -> Figure:
    """Data loss, accuracy (with val macro AUC) and learning rate per epoch.

    The loss panel shows the data loss (`data_loss`, without the L2 penalty) when the
    history has it, else Keras' total `loss`. `best_epoch` (the epoch whose weights were
    kept, from train.json) is marked on the first two panels.
    """
    if "epoch" not in history.columns:
        raise ValueError("training history needs an 'epoch' column")
    epochs = history["epoch"].to_numpy()
    fig, body = _figure(14, 4.4, banner)
    axes = body.subplots(1, 3)
    loss = "data_loss" if "data_loss" in history.columns else "loss"
    panels = (
        (axes[0], loss, "Loss without L2 (data loss)" if loss == "data_loss" else "Loss", "loss"),
        (axes[1], "accuracy", "Accuracy", "accuracy, AUC"),
    )
    for ax, metric, title, ylabel in panels:
        for key, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
            if key in history.columns:
                ax.plot(epochs, history[key], style, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("Epoch (0-based)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if "val_roc_auc_macro" in history.columns:
        axes[1].plot(
            epochs,
            history["val_roc_auc_macro"],
            ":",
            marker="s",
            markersize=3,
            label="validation macro ROC AUC",
        )
        axes[1].set_title("Accuracy and validation macro AUC")
    if best_epoch is not None:
        for ax in axes[:2]:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
    for ax in axes[:2]:
        if ax.lines:
            ax.legend(loc="best")
    if "accuracy" in history.columns or "val_accuracy" in history.columns:
        axes[1].set_ylim(-0.02, 1.02)
    ax = axes[2]
    if "learning_rate" in history.columns:
        ax.step(epochs, history["learning_rate"], where="post", marker="o", markersize=3)
        ax.set_yscale("log")
    ax.set_title("Learning rate")
    ax.set_xlabel("Epoch (0-based)")
    ax.set_ylabel("learning rate (log scale)")
    ax.grid(alpha=0.3, which="both")
    body.suptitle("Training curves", fontweight="bold")
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- confusion


def _annotate(ax, matrix: np.ndarray, fmt: str, vmax: float) -> None:
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            color = "white" if vmax > 0 and value > 0.6 * vmax else "black"
            ax.text(j, i, format(value, fmt), ha="center", va="center", color=color, fontsize=11)


def confusion_matrices(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    k = len(class_names)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig, body = _figure(13, 5.6, banner)
    axes = body.subplots(1, 2)
    panels = (
        (axes[0], counts, "d", "Counts", max(int(counts.max()), 1)),
        (axes[1], normalised, ".2f", "Normalised by true class (row = recall)", 1.0),
    )
    for ax, matrix, fmt, title, vmax in panels:
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        _annotate(ax, matrix, fmt, vmax)
        ax.set_xticks(range(k), labels=list(class_names), rotation=20, ha="right")
        ax.set_yticks(range(k), labels=list(class_names))
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(title)
        body.colorbar(image, ax=ax, shrink=0.8)
    body.suptitle(f"Confusion matrix (n = {int(counts.sum())})", fontweight="bold")
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- ROC / PR


def _one_vs_rest(y_true: Sequence[int], proba: np.ndarray, class_names: Sequence[str]):
    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(class_names) or len(y) != len(proba):
        raise ValueError(
            f"probabilities of shape {proba.shape} do not match {len(y)} labels and "
            f"{len(class_names)} classes"
        )
    for c, name in enumerate(class_names):
        yield c, name, (y == c).astype(int), proba[:, c]


def roc_curves(
    y_true: Sequence[int],
    proba: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """One-vs-rest ROC curve per class from probabilities, AUC in the legend."""
    fig, body = _figure(7.5, 6.5, banner)
    ax = body.subplots()
    aucs = []
    for c, name, positive, score in _one_vs_rest(y_true, proba, class_names):
        if positive.min() == positive.max():
            ax.plot([], [], color=f"C{c}", label=f"{name} (AUC undefined: one class only)")
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        auc = roc_auc_score(positive, score)
        aucs.append(auc)
        ax.plot(fpr, tpr, color=f"C{c}", linewidth=2, label=f"{name} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="chance (AUC = 0.5)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    macro = f", macro AUC = {np.mean(aucs):.3f}" if aucs else ""
    ax.set_title(f"ROC curves, one-vs-rest{macro}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out, dpi)


def pr_curves(
    y_true: Sequence[int],
    proba: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """One-vs-rest precision-recall curve per class, AP in the legend, prevalence baselines."""
    fig, body = _figure(7.5, 6.5, banner)
    ax = body.subplots()
    for c, name, positive, score in _one_vs_rest(y_true, proba, class_names):
        prevalence = float(positive.mean()) if len(positive) else 0.0
        if positive.sum() == 0:
            ax.plot([], [], color=f"C{c}", label=f"{name} (AP undefined: no positives)")
            continue
        precision, recall, _ = precision_recall_curve(positive, score)
        ap = average_precision_score(positive, score)
        ax.step(
            recall,
            precision,
            where="post",
            color=f"C{c}",
            linewidth=2,
            label=f"{name} (AP = {ap:.3f})",
        )
        ax.axhline(
            prevalence,
            color=f"C{c}",
            linestyle=":",
            linewidth=1,
            label=f"{name} prevalence = {prevalence:.2f}",
        )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (positive predictive value)")
    ax.set_title("Precision-recall curves, one-vs-rest")
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- calibration


def calibration_bins(
    y_true: Sequence[int], proba: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Top-label (confidence, accuracy, count) per equal-width bin and the ECE.

    The bins and the ECE are `petscan.evaluation.metrics`' own, so the figure agrees with
    `metrics.json`. Empty bins have NaN confidence and accuracy.
    """
    mean_conf, accuracy, count = metrics.reliability_curve(y_true, proba, n_bins)
    return mean_conf, accuracy, count, metrics.expected_calibration_error(y_true, proba, n_bins)


def reliability_diagram(
    y_true: Sequence[int],
    proba: np.ndarray,
    n_bins: int,
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Top-label confidence vs accuracy per bin, with a histogram of the bin counts."""
    mean_conf, accuracy, count, ece = calibration_bins(y_true, proba, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
    fig, body = _figure(7, 8, banner)
    top, bottom = body.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = count > 0
    top.bar(
        centers[filled],
        accuracy[filled],
        width=width * 0.95,
        color="C0",
        edgecolor="black",
        label="accuracy in bin",
    )
    top.bar(
        centers[filled],
        mean_conf[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=width * 0.95,
        color="none",
        edgecolor="C3",
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.set_ylabel("Accuracy")
    top.set_title(f"Reliability diagram (top label), ECE = {ece:.3f}, {n_bins} bins")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(centers, count, width=width * 0.95, color="grey", edgecolor="black")
    bottom.set_xlabel("Confidence (highest predicted probability)")
    bottom.set_ylabel("Images")
    bottom.set_title(f"Images per confidence bin (n = {int(count.sum())})")
    bottom.grid(alpha=0.3)
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- explanations

GALLERY_COLUMNS = {
    ("correct", "high"): "correct, most confident",
    ("correct", "low"): "correct, least confident",
    ("wrong", "high"): "wrong, most confident",
    ("wrong", "low"): "wrong, least confident",
}


def explanation_gallery(
    gallery: pd.DataFrame,
    panel_dir: str | Path,
    class_names: Sequence[str],
    out: str | Path,
    banner: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Grad-CAM overlays of chosen test images: one row per true class, one column per
    slot (`GALLERY_COLUMNS`). Visible lesions of the ground truth are outlined in cyan,
    the heatmap's peak is a white cross. `gallery` is the explain stage's gallery.csv.
    """
    slots = list(GALLERY_COLUMNS)
    fig, body = _figure(3.0 * len(slots), 3.6 * len(class_names), banner)
    axes = np.atleast_2d(body.subplots(len(class_names), len(slots), squeeze=False))
    for r, name in enumerate(class_names):
        for c, slot in enumerate(slots):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(GALLERY_COLUMNS[slot], fontsize=10, fontweight="bold")
            if c == 0:
                ax.set_ylabel(f"true: {name}", fontsize=10)
            match = gallery[
                (gallery["true_class"] == name)
                & (gallery["outcome"] == slot[0])
                & (gallery["confidence_end"] == slot[1])
            ]
            row = match.iloc[0] if len(match) else None
            if row is None or not isinstance(row.get("panel"), str):
                ax.text(0.5, 0.5, "no such image", ha="center", va="center", color="grey")
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            with Image.open(Path(panel_dir) / row["panel"]) as image:
                ax.imshow(np.asarray(image.convert("RGB")))
            for col, row_px, rc, rr in json.loads(row["visible_lesions"]):
                ax.add_patch(
                    Ellipse((col, row_px), 2 * rc, 2 * rr, fill=False, color="cyan", lw=1.2)
                )
            ax.plot(row["peak_col"], row["peak_row"], "w+", ms=12, mew=2)
            ax.set_xlabel(
                f"pred. {row['predicted_class']} ({row['confidence']:.2f})\n"
                f"{Path(row['path']).name}",
                fontsize=8,
            )
    body.suptitle(
        "Grad-CAM of the predicted class (test images); cyan: visible lesions, +: peak",
        fontsize=11,
    )
    return _save(fig, out, dpi)
