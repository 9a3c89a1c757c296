"""DVC stage `featurize`: run the frozen backbone once over every split and cache its features.

Reads params sections `data` (class names), `model` (backbone, input size, preprocessing,
resize), `featurize` (batch size, augmented views, augmentation, seed, out_dir) and
`weights` (`weights.dir`: where `weights.h5` / `weights.json` are) and `split.out_dir`.
Reads the manifests `<split.out_dir>/{train,val,test}.csv` and writes
`<featurize.out_dir>/{split}.npy` (float32 (N, V, D); V = 1 + augment_views for train, 1 for
val and test) and `{split}.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petscan.handoff.manifests import SPLITS
from petscan.handoff.records import read_weights_info, weights_file
from petscan.params import loading as config
from petscan.utils import errors, logs

SECTIONS = ("data", "model", "featurize", "weights.dir", "split.out_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = config.stage_parser(__doc__)
    parser.add_argument(
        "--splits", nargs="+", default=list(SPLITS), help="splits to featurize (train val test)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


@errors.reports_user_errors("featurize")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = config.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.data.features import run_featurize  # here: TensorFlow takes ~5 s to load

    data, model, params = sections["data"], sections["model"], sections["featurize"]
    weights_dir = Path(sections["weights"]["dir"])
    split_dir = sections["split"]["out_dir"]
    root = config.workspace_root()
    weights = read_weights_info(weights_dir)
    results = run_featurize(
        {split: Path(split_dir) / f"{split}.csv" for split in args.splits},
        params["out_dir"],
        model,
        params,
        weights_path=weights_file(weights_dir),
        weights=weights,
        class_names=config.class_names(data),
        root=root,
        progress=not args.no_progress,
    )
    banner = weights.banner
    for split, result in results.items():
        timing = result["timing"]
        print(
            f"{split}: {result['rows']} images x {result['views']} views -> "
            f"{params['out_dir']}/{split}.npy ({result['dim']} features), "
            f"{timing['images_per_s']:.1f} images/s"
        )
    if banner:
        print(f"WARNING: features computed with a {banner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
