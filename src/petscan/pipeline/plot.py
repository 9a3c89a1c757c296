"""DVC stage `plot`: draw the report figures and log them into the training run.

Reads the `data`, `plot` and `mlflow` sections of params.yaml, plus `train.out_dir`
and `evaluate` (out_dir, ece_bins). Draws from `<train.out_dir>/history.csv` and
`<evaluate.out_dir>/predictions_{val,test}.csv` into `plot.out_dir`: training_curves.png
and {confusion,roc,pr,reliability}_{val,test}.png, plus explanations_test.png from the
explain stage's gallery (`explain.out_dir`), each with a warning banner when the backbone
was random-init (`handoff.records.banner`). The figures are drawn by
`petscan.evaluation.plots` and logged to the training run's `figures/` artifacts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from petscan.params.loading import StageParams, load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs
from petscan.utils.errors import MissingInputError

SECTIONS = (
    "data.classes",
    "plot",
    "mlflow",
    "train.out_dir",
    "evaluate.out_dir",
    "evaluate.ece_bins",
    "explain.out_dir",
)
FIGURES = ("confusion", "roc", "pr", "reliability")
SPLITS = ("val", "test")


def plot(params: StageParams, root: Path) -> list[Path]:
    """The `plot` stage: training curves, per split confusion / ROC / PR / reliability, the
    explanation gallery. Returns the figures' paths."""
    import mlflow  # here: a stage's --help does not wait for MLflow and matplotlib
    import pandas as pd

    from petscan.evaluation import plots
    from petscan.handoff.records import read_train_info
    from petscan.handoff.results import read_predictions
    from petscan.tracking.runs import training_run

    class_names = params.data.class_names
    train_dir = root / params.train.out_dir
    reports = root / params.evaluate.out_dir
    fig_dir = root / params.plot.out_dir
    dpi = params.plot.dpi
    bins = params.evaluate.ece_bins
    info = read_train_info(train_dir)
    banner = info.weights.banner
    history = pd.read_csv(train_dir / "history.csv")
    best: int | None = info.best_epoch
    if "fold" in history.columns:  # train.protocol cv: one curve per fold, no single kept epoch
        folds = [f for _, f in history.groupby("fold", sort=False)]
        history = pd.concat([part for f in folds for part in (f, f.iloc[:1] * float("nan"))])
        best = None
    written = [fig_dir / "training_curves.png"]
    plots.training_curves(history, written[0], banner, dpi, best)
    for split in SPLITS:
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
    written.append(explanation_figure(params, root, banner))
    with training_run(info.model_sha256, params.mlflow, params.as_dict()) as run:
        if run is not None:
            for path in written:
                mlflow.log_artifact(str(path), artifact_path="figures")
    return written


def explanation_figure(params: StageParams, root: Path, banner: str | None) -> Path:
    """`explanations_test.png` from the explain stage's gallery (`explain.out_dir`)."""
    import pandas as pd

    from petscan.evaluation import plots
    from petscan.handoff.results import GALLERY_FILE, GALLERY_SPLIT

    panels = root / params.explain.out_dir / "gallery"
    if not (panels / GALLERY_FILE).is_file():
        raise MissingInputError(f"{panels / GALLERY_FILE} not found: run `dvc repro explain`")
    out = root / params.plot.out_dir / f"explanations_{GALLERY_SPLIT}.png"
    gallery = pd.read_csv(panels / GALLERY_FILE)
    plots.explanation_gallery(
        gallery, panels, params.data.class_names, out, banner, params.plot.dpi
    )
    return out


@errors.reports_user_errors("plot")
def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    written = plot(params, workspace_root())
    print(f"plot: wrote {len(written)} figures into {params.plot.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
