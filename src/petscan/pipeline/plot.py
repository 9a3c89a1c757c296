"""The `plot` stage: figures of what train, evaluate and explain wrote (drawn by `plots`).

Training curves from `history.csv`; per split, confusion matrices, ROC, PR and reliability
diagrams from the evaluate stage's predictions; the explain stage's gallery. Figures of a
random-init backbone carry the warning banner (`handoff.banner`). Logged to the training
run's `figures/` artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from petscan.evaluation import plots
from petscan.handoff.records import read_train_info
from petscan.handoff.results import GALLERY_FILE, GALLERY_SPLIT, read_predictions
from petscan.params import loading as config
from petscan.tracking import runs as tracking
from petscan.utils.errors import MissingInputError

FIGURES = ("confusion", "roc", "pr", "reliability")


def run_plot(params: dict[str, Any], root: str | Path = ".") -> list[Path]:
    """The `plot` stage: training curves and, per split, confusion / ROC / PR / reliability.

    `params` holds `data`, `plot`, `train.out_dir`, `evaluate` (out_dir, ece_bins) and
    `mlflow`. Figures of a random-init backbone carry the warning banner.
    """
    root = Path(root)
    class_names = config.class_names(params["data"])
    train_dir = root / params["train"]["out_dir"]
    reports = root / params["evaluate"]["out_dir"]
    fig_dir = root / params["plot"]["out_dir"]
    dpi = int(params["plot"]["dpi"])
    bins = int(params["evaluate"]["ece_bins"])
    info = read_train_info(train_dir)
    banner = info.weights.banner
    history = pd.read_csv(train_dir / "history.csv")
    written = [fig_dir / "training_curves.png"]
    plots.training_curves(history, written[0], banner, dpi, info.best_epoch)
    for split in ("val", "test"):
        source = reports / f"predictions_{split}.csv"
        if not source.is_file():
            raise MissingInputError(f"{source} not found: run `dvc repro evaluate` first")
        y_true, proba, _ = read_predictions(source, class_names)
        out = {name: fig_dir / f"{name}_{split}.png" for name in FIGURES}
        plots.confusion_matrices(
            y_true, proba.argmax(axis=1), class_names, out["confusion"], banner, dpi
        )
        plots.roc_curves(y_true, proba, class_names, out["roc"], banner, dpi)
        plots.pr_curves(y_true, proba, class_names, out["pr"], banner, dpi)
        plots.reliability_diagram(y_true, proba, bins, out["reliability"], banner, dpi)
        written.extend(out.values())
    if "explain" in params:  # the explain stage's gallery panels
        written.append(explanation_figure(params, root, class_names, banner, dpi))
    run_id = tracking.training_run_id(info.model_sha256, params["mlflow"])
    with tracking.resumed_run(run_id, params["mlflow"]) as run:
        if run is not None:
            stage_params = {"plot": params["plot"], "evaluate": {"ece_bins": bins}}
            tracking.log_stage_params(run.info.run_id, stage_params)
            for path in written:
                mlflow.log_artifact(str(path), artifact_path="figures")
    return written


def explanation_figure(
    params: dict[str, Any], root: Path, class_names: list[str], banner: str | None, dpi: int
) -> Path:
    """`explanations_test.png` from the explain stage's gallery (`explain.out_dir`)."""
    panels = root / params["explain"]["out_dir"] / "gallery"
    if not (panels / GALLERY_FILE).is_file():
        raise MissingInputError(f"{panels / GALLERY_FILE} not found: run `dvc repro explain`")
    out = root / params["plot"]["out_dir"] / f"explanations_{GALLERY_SPLIT}.png"
    gallery = pd.read_csv(panels / GALLERY_FILE)
    plots.explanation_gallery(gallery, panels, class_names, out, banner, dpi)
    return out
