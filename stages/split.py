"""DVC stage `split`: index `data.raw_dir`, report bad files and write the split manifests.

Reads the `data` and `split` sections of params.yaml and writes into `split.out_dir`:
train.csv, val.csv, test.csv, index.csv, summary.json (DVC metrics) and report.json.
"""

from __future__ import annotations

import argparse
import logging
import sys

from petscan.params import loading as config
from petscan.utils import errors, logs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = config.stage_parser(__doc__)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


@errors.reports_user_errors("split")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_sections(("data", "split"), args.params)
    logs.setup(args.verbose)
    from petscan.data.split import run_split  # after parsing: loads pandas and SciPy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_split(
        params["data"], params["split"], root=config.workspace_root(), progress=not args.no_progress
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
