"""DVC stage `split`: index `data.raw_dir`, report bad files and write the split manifests.

Reads the `data` and `split` sections of params.yaml and writes into `split.out_dir`:
train.csv, val.csv, test.csv, index.csv, summary.json (DVC metrics) and report.json.
"""

from __future__ import annotations

import argparse
import logging
import sys

from petscan import config
from petscan.dataset import DataError
from petscan.split import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=config.PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = config.load_section("data", args.params)
    split = config.load_section("split", args.params)
    try:
        run(data, split, root=config.workspace_root(), progress=not args.no_progress)
    except DataError as err:
        print(f"split: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
