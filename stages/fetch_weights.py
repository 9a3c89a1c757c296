"""DVC stage `fetch_weights`: put the backbone weights at `<weights.dir>/weights.h5`.

Reads params sections `weights` and `model` (backbone, input_size). Tries each entry of
`weights.sources` in order, checks the file loads into the configured backbone, and writes
`weights.json` beside it (source, sha256, random_init, label). Without any working source,
`weights.fallback` decides: none (fail), random (labelled random-init), imagenet.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from petscan.params import loading as config
from petscan.utils import errors, logs

SECTIONS = ("weights", "model.backbone", "model.input_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = config.stage_parser(
        __doc__.split("\n\n")[0],
        prog="fetch_weights",
        epilog="Place the RadImageNet file by hand at the `file` source's path in params.yaml.",
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument(
        "--force", action="store_true", help="fetch again even when the installed file is current"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


@errors.reports_user_errors("fetch_weights")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.weights import fetch as weights  # here: TensorFlow takes ~5 s to load

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = weights.run_fetch_weights(
        params["weights"],
        params["model"],
        workspace=config.workspace_root(Path(args.params).resolve().parent),
        force=args.force,
        progress=not args.no_progress,
    )
    flag = "  <-- NOT RadImageNet" if meta["random_init"] else ""
    print(
        f"backbone {meta['backbone']}: {meta['weights_label']} from {meta['weights_source']}{flag}"
    )
    print(f"sha256 {meta['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
