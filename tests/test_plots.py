"""The report figures: sizes, banner, and the numbers printed on them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import figure_texts
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from petscan.evaluation import plots

CLASSES = ["No cancer", "Breast cancer", "Prostate cancer"]
BANNER = "RANDOM-INIT backbone (not RadImageNet) - not a RadImageNet result"
DPI = 50  # small files keep the tests fast


def legend_texts(fig) -> list[str]:
    """The legend entries of every axes of `fig`, in order."""
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    logits = rng.normal(size=(36, 3))
    logits[np.arange(36), y] += 1.2
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": range(6),
            "loss": [1.0, 0.8, 0.7, 0.6, 0.55, 0.5],
            "accuracy": [0.3, 0.4, 0.5, 0.6, 0.65, 0.7],
            "val_loss": [1.1, 0.9, 0.8, 0.85, 0.9, 0.95],
            "val_accuracy": [0.3, 0.35, 0.45, 0.5, 0.5, 0.5],
            "learning_rate": [5e-5, 5e-5, 1e-4, 1e-4, 1e-5, 1e-5],
        }
    )


def png_size(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or empty"
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def draw_all(tmp_path, predictions, banner):
    y, proba = predictions
    return {
        "curves": (plots.training_curves(history(), tmp_path / "c.png", banner, DPI), (14, 4.4)),
        "confusion": (
            plots.confusion_matrices(y, proba.argmax(1), CLASSES, tmp_path / "m.png", banner, DPI),
            (13, 5.6),
        ),
        "roc": (plots.roc_curves(y, proba, CLASSES, tmp_path / "r.png", banner, DPI), (7.5, 6.5)),
        "pr": (plots.pr_curves(y, proba, CLASSES, tmp_path / "p.png", banner, DPI), (7.5, 6.5)),
        "reliability": (
            plots.reliability_diagram(y, proba, 10, tmp_path / "e.png", banner, DPI),
            (7, 8),
        ),
    }


FILES = {"curves": "c", "confusion": "m", "roc": "r", "pr": "p", "reliability": "e"}


@pytest.mark.parametrize("banner", [None, BANNER])
def test_every_figure_is_a_png_of_the_expected_size(tmp_path, predictions, banner):
    figures = draw_all(tmp_path, predictions, banner)
    extra = plots.BANNER_HEIGHT if banner else 0
    for name, (fig, (width, height)) in figures.items():
        size = png_size(tmp_path / f"{FILES[name]}.png")
        assert size == (round(width * DPI), round((height + extra) * DPI)), name
        texts = figure_texts(fig)
        assert (BANNER in texts) == bool(banner), f"{name}: banner drawn = {BANNER in texts}"
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_roc_and_pr_legends_carry_sklearn_numbers(tmp_path, predictions):
    y, proba = predictions
    roc = legend_texts(plots.roc_curves(y, proba, CLASSES, tmp_path / "r.png", dpi=DPI))
    pr = legend_texts(plots.pr_curves(y, proba, CLASSES, tmp_path / "p.png", dpi=DPI))
    for c, name in enumerate(CLASSES):
        auc = roc_auc_score(y == c, proba[:, c])
        ap = average_precision_score(y == c, proba[:, c])
        assert f"{name} (AUC = {auc:.3f})" in roc
        assert f"{name} (AP = {ap:.3f})" in pr
        assert f"{name} prevalence = 0.33" in pr  # 12 of 36 images per class
    assert "chance (AUC = 0.5)" in roc


def test_roc_of_a_perfect_ranking_is_one_and_uses_probabilities(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    # argmax is right for 4 of 6 images, but each column still ranks its class first
    proba = np.array(
        [
            [0.5, 0.4, 0.1],
            [0.6, 0.3, 0.1],
            [0.45, 0.5, 0.05],
            [0.55, 0.45, 0.0],
            [0.34, 0.0, 0.66],
            [0.36, 0.02, 0.62],
        ]
    )
    fig = plots.roc_curves(y, proba, CLASSES, tmp_path / "r.png", dpi=DPI)
    legend = legend_texts(fig)
    assert "Breast cancer (AUC = 1.000)" in legend
    assert "Prostate cancer (AUC = 1.000)" in legend
    assert f"No cancer (AUC = {roc_auc_score(y == 0, proba[:, 0]):.3f})" in legend


def test_confusion_cells_show_counts_and_row_fractions(tmp_path):
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2]
    fig = plots.confusion_matrices(y_true, y_pred, CLASSES, tmp_path / "m.png", dpi=DPI)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    counts_ax, norm_ax = by_title["Counts"], by_title["Normalised by true class (row = recall)"]
    counts = [t.get_text() for t in counts_ax.texts]
    fractions = [t.get_text() for t in norm_ax.texts]
    assert counts == ["3", "1", "0", "0", "1", "1", "0", "0", "1"]
    assert fractions == ["0.75", "0.25", "0.00", "0.00", "0.50", "0.50", "0.00", "0.00", "1.00"]
    assert "Confusion matrix (n = 7)" in figure_texts(fig)


def test_calibration_bins_and_ece_by_hand():
    y = np.array([0, 1, 0, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.35, 0.3, 0.35], [0.1, 0.1, 0.8]])
    conf, acc, count, ece = plots.calibration_bins(y, proba, 5)
    # bins of width 0.2, [i/5, (i+1)/5): 0.35 -> bin 1; 0.8, 0.8 and 0.9 -> bin 4
    assert count.tolist() == [0, 1, 0, 0, 3]
    np.testing.assert_allclose(conf[[1, 4]], [0.35, 2.5 / 3])
    np.testing.assert_allclose(acc[[1, 4]], [1.0, 2 / 3])
    # |1 - 0.35| * 1/4 + |2/3 - 2.5/3| * 3/4
    assert ece == pytest.approx(0.65 / 4 + (0.5 / 3) * 3 / 4)


def test_reliability_title_shows_the_ece(tmp_path, predictions):
    y, proba = predictions
    *_, ece = plots.calibration_bins(y, proba, 10)
    fig = plots.reliability_diagram(y, proba, 10, tmp_path / "e.png", dpi=DPI)
    title = next(t for t in figure_texts(fig) if t.startswith("Reliability diagram"))
    assert float(re.search(r"ECE = ([0-9.]+)", title).group(1)) == pytest.approx(ece, abs=5e-4)


def test_class_without_positives_is_labelled_not_crashed(tmp_path):
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    roc = legend_texts(plots.roc_curves(y, proba, CLASSES, tmp_path / "r.png", dpi=DPI))
    assert "Prostate cancer (AUC undefined: one class only)" in roc
    pr = legend_texts(plots.pr_curves(y, proba, CLASSES, tmp_path / "p.png", dpi=DPI))
    assert "Prostate cancer (AP undefined: no positives)" in pr


def test_mismatched_probabilities_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        plots.roc_curves([0, 1], np.ones((2, 2)) / 2, CLASSES, tmp_path / "r.png")
