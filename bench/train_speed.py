"""How much the cached-feature training saves: time a full cached training against one
end-to-end epoch on the same images.

Needs the outputs of `dvc repro featurize` (data/split/*.csv, data/features, the
backbone weights). Early stopping is switched off so the cached run does all
`train.epochs` epochs (50 in the seed's recipe); nothing is logged to MLflow and
nothing is written. Example:

    python bench/train_speed.py --limit 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from petscan.params.loading import load_sections, stage_parser, workspace_root

SECTIONS = ("data", "model", "train", "featurize", "split.out_dir", "weights.dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument("--epochs", type=int, default=None, help="cached epochs (train.epochs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from petscan.data.features import load_features
    from petscan.handoff.records import weights_file
    from petscan.training.fit import fit_cached, fit_end_to_end

    root = workspace_root()
    params = load_sections(SECTIONS, args.params)
    featurize = params.featurize
    split_dir = root / params.split.out_dir
    weights_path = weights_file(root / params.weights.dir)
    stopping = params.train.early_stopping.model_copy(update={"enabled": False})
    train = params.train.model_copy(update={"early_stopping": stopping})
    if args.epochs:
        train = train.model_copy(update={"epochs": args.epochs})
    k = len(params.data.class_names)

    sets = {
        s: load_features(root / featurize.out_dir, s, split_dir / f"{s}.csv")
        for s in ("train", "val")
    }
    n = min(args.limit or len(sets["train"].labels), len(sets["train"].labels))
    x, y = sets["train"].features[:n], sets["train"].labels[:n]
    vx, vy = sets["val"].features, sets["val"].labels

    start = time.perf_counter()
    cached = fit_cached(x, y, vx, vy, params.model, train, k, verbose=0)
    cached_s = time.perf_counter() - start

    e2e = train.model_copy(update={"epochs": 1})
    frames = {s: sets[s].frame for s in ("train", "val")}
    start = time.perf_counter()
    fit_end_to_end(
        frames["train"].iloc[:n],
        frames["val"],
        params.model,
        e2e,
        featurize.augmentation,
        weights_path if Path(weights_path).is_file() else None,
        k,
        root=root,
        verbose=0,
    )
    e2e_s = time.perf_counter() - start

    epochs = cached.epochs_run
    print(f"images: {n} train, {len(vy)} val; backbone {params.model.backbone}")
    print(f"cached training, {epochs} epochs: {cached_s:8.2f} s ({cached_s / epochs:.3f} s/epoch)")
    print(f"end-to-end training, 1 epoch:    {e2e_s:8.2f} s")
    print(f"one end-to-end epoch / whole cached training: {e2e_s / cached_s:.2f}x")
    print(f"end-to-end / cached, per epoch: {e2e_s / (cached_s / epochs):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
