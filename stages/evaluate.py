"""DVC stage `evaluate`: run the saved model on the val and test image files.

Reads the `data`, `model`, `train`, `evaluate` and `mlflow` sections of params.yaml
(and `split.out_dir`). Writes into `evaluate.out_dir`: predictions_{val,test}.csv,
classification_report_{val,test}.txt, metrics.json (DVC metrics: per split accuracy,
balanced accuracy, macro F1, macro ROC AUC and ECE with their 95% intervals, and
random_init) and metrics_full.json (every metric). Logs `val/<metric>`, `test/<metric>` and
the files into the MLflow run that trained the model (found by the model sha256 recorded in
`<train.out_dir>/train.json`) and adds the test metrics to its registered version.
"""

from __future__ import annotations

import argparse
import sys

from petscan.handoff.records import banner
from petscan.params import loading as config
from petscan.utils import errors, logs

SECTIONS = ("data", "model", "train", "evaluate", "mlflow", "split.out_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return config.stage_parser(__doc__).parse_args(argv)


@errors.reports_user_errors("evaluate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.pipeline.evaluate import run_evaluate  # here: TensorFlow takes ~5 s to load

    results = run_evaluate(params, root=config.workspace_root())
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
