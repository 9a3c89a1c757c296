"""DVC stage `plot`: draw the report figures and log them into the training run.

Reads the `data`, `plot` and `mlflow` sections of params.yaml, plus `train.out_dir`
and `evaluate` (out_dir, ece_bins). Draws from `<train.out_dir>/history.csv` and
`<evaluate.out_dir>/predictions_{val,test}.csv` into `plot.out_dir`: training_curves.png
and {confusion,roc,pr,reliability}_{val,test}.png, plus explanations_test.png from the
explain stage's gallery (`explain.out_dir`), each with a warning banner when the backbone
was random-init.
"""

from __future__ import annotations

import argparse
import sys

from petscan.params import loading as config
from petscan.utils import errors, logs

SECTIONS = ("data", "plot", "evaluate", "mlflow", "train.out_dir", "explain.out_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return config.stage_parser(__doc__).parse_args(argv)


@errors.reports_user_errors("plot")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.pipeline.plot import run_plot  # here: TensorFlow takes ~5 s to load

    written = run_plot(params, root=config.workspace_root())
    print(f"plot: wrote {len(written)} figures into {params['plot']['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
