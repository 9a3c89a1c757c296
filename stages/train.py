"""DVC stage `train`: fit the classifier and log one MLflow run.

Reads the `data`, `model`, `train` and `mlflow` sections of params.yaml, plus
`weights.dir`, `split.out_dir`, `split.max_pixels` (the logged model's pixel limit),
`featurize.out_dir` and `featurize.augmentation` (end_to_end mode), and logs all of them as
MLflow params. `train.mode: cached` fits the dense head on the cached features; `end_to_end`
trains from the image files through the backbone. Writes into `train.out_dir`: model.keras
(image -> probabilities), history.csv and train.json (the same bytes for the same inputs),
registers the model in MLflow and moves `mlflow.alias` to the new version.
"""

from __future__ import annotations

import argparse
import sys

from petscan.handoff.records import banner
from petscan.params import loading as config
from petscan.utils import errors, logs

SECTIONS = (
    "data",
    "model",
    "train",
    "mlflow",
    "weights.dir",
    "split.out_dir",
    "split.max_pixels",  # the logged MLflow model refuses the images split refuses
    "split.min_side",
    "split.max_aspect",
    "featurize.out_dir",
    "featurize.augmentation",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = config.stage_parser(__doc__)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser.parse_args(argv)


def load_params(path: str) -> dict:
    """The sections and single keys this stage reads (and logs as MLflow params)."""
    return config.load_sections(SECTIONS, path)


@errors.reports_user_errors("train")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)  # validated before TensorFlow loads or a run opens
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.training.fit import run_train  # here: TensorFlow takes ~5 s to load

    summary = run_train(params, root=config.workspace_root(), verbose=0 if args.quiet else 2)
    print(
        f"train: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
        f"(val data loss {summary.get('best_val_data_loss', float('nan')):.4f}, "
        f"val macro AUC {summary.get('best_val_roc_auc_macro', float('nan')):.3f}); "
        f"MLflow run {summary['mlflow_run_id']}"
        + (f"; {text}" if (text := banner(summary)) else "")
    )
    if summary["collapse"]["collapsed"]:
        print(f"WARNING: {summary['collapse']['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
