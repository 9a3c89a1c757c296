"""DVC stage `evaluate`: run the saved model on the val and test image files.

Reads the `data`, `model`, `train`, `evaluate` and `mlflow` sections of params.yaml
(and `split.out_dir`). Writes into `evaluate.out_dir`: predictions_{val,test}.csv,
classification_report_{val,test}.txt, metrics.json (DVC metrics: per split accuracy,
balanced accuracy, macro F1, macro ROC AUC and ECE with their 95% intervals, and
random_init) and metrics_full.json (every metric). Logs `val/<metric>`, `test/<metric>` and
the files into the MLflow run that trained the model (found by the model sha256 recorded in
`<train.out_dir>/train.json`) and adds the test metrics to its registered version.

When train ran `train.protocol: cv`, also scores its out-of-fold predictions
(`<train.out_dir>/cv/oof.csv`) as the split `oof` (patient-bootstrap intervals, the folds'
mean and sd: `evaluation.out_of_fold`), reports the test ECE before the model's temperature
(`test/ece_uncalibrated`) and logs the per-fold metrics (reports/cv_folds.csv) to MLflow.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from petscan.handoff.records import banner
from petscan.params.loading import StageParams, load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs

SECTIONS = ("data.classes", "model", "train", "evaluate", "mlflow", "split.out_dir")
SPLITS = ("val", "test")


def evaluate(params: StageParams, root: Path, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """The `evaluate` stage: predictions, reports and `metrics.json`; log to the train run.

    Returns the nested metrics written to metrics_full.json.
    """
    import mlflow  # here, as TensorFlow below: a stage's --help does not wait for them

    from petscan.evaluation.predictions import evaluate_split
    from petscan.handoff.records import read_train_info
    from petscan.handoff.results import write_metrics
    from petscan.model.saving import load_model
    from petscan.tracking.registry import describe_model_version
    from petscan.tracking.runs import training_run

    class_names = params.data.class_names
    train_dir = root / params.train.out_dir
    out_dir = root / params.evaluate.out_dir
    split_dir = root / params.split.out_dir
    info = read_train_info(train_dir)
    model = load_model(train_dir / "model.keras")
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
            params.model,
            params.train.loss,
            params.evaluate,
            out_dir,
            root,
        )
        results[split] = values
        files.extend(paths.values())
    fold_table = _score_folds(params, train_dir, out_dir, results)
    metrics_path, full_path = write_metrics(out_dir, results)
    with training_run(info.model_sha256, params.mlflow, params.as_dict()) as run:
        if run is not None:
            mlflow.log_metrics(mlflow_metrics(results))
            for path in [metrics_path, full_path, *files]:
                mlflow.log_artifact(str(path), artifact_path="reports")
            if fold_table is not None:
                mlflow.log_text(fold_table.to_csv(index=False), "reports/cv_folds.csv")
            describe_model_version(run.info.run_id, params.mlflow, results)
    return results


def _score_folds(
    params: StageParams, train_dir: Path, out_dir: Path, results: dict[str, Any]
) -> Any:
    """With the `cv` protocol: `results["oof"]`, `results["protocol"]`, the test ECE before
    the temperature; returns the per-fold table (None for holdout, `results` unchanged)."""
    from petscan.evaluation import metrics
    from petscan.evaluation.out_of_fold import oof_results, read_oof, read_protocol, uncalibrate
    from petscan.handoff.results import read_predictions

    protocol = read_protocol(train_dir)
    if protocol.get("protocol") != "cv":
        return None
    class_names = params.data.class_names
    results["protocol"] = protocol
    results["oof"], table = oof_results(
        read_oof(train_dir), class_names, params.train.loss, params.evaluate
    )
    if "test" in results:
        y, proba, _ = read_predictions(out_dir / "predictions_test.csv", class_names)
        results["test"]["ece_uncalibrated"] = metrics.expected_calibration_error(
            y, uncalibrate(proba, protocol["temperature"]), params.evaluate.ece_bins
        )
    return table


def mlflow_metrics(nested: dict[str, Any]) -> dict[str, float]:
    """`{"test": {"accuracy": x}}` -> `{"test/accuracy": x}` (finite numbers only)."""
    flat: dict[str, float] = {}
    for split, values in nested.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                flat[f"{split}/{name}"] = float(value)
    return flat


@errors.reports_user_errors("evaluate")
def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    results = evaluate(params, workspace_root())
    test = results["test"]
    print(
        f"evaluate: test accuracy {test['accuracy']:.4f} "
        f"[{test['accuracy_ci_low']:.4f}, {test['accuracy_ci_high']:.4f}], "
        f"macro F1 {test['f1_macro']:.4f}, ECE {test['ece']:.4f}"
        + (f"  ({text})" if (text := banner(results)) else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
