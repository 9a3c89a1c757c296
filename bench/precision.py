"""float32 or bfloat16 backbone? Speed, feature agreement and what the head learns, side by side.

Featurizes train + val of the demo data twice in one run, with `featurize.precision`
float32 and bfloat16 (params.yaml's views, augmentation and batch size; into temporary
folders), and prints for each: backbone inputs per second, then the cosine similarity of
the two feature sets per image and view (median and 1st percentile), and the head's macro
ROC AUC on the learning benchmark's five patient-grouped folds (bench/learning.py) trained
on each feature set. `auto` may choose bfloat16 only where the AUC difference is inside
the folds' spread.

    .venv/bin/python bench/precision.py          # after `make run` (needs data/split)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from petscan.handoff.records import read_weights_info, weights_file
from petscan.model.network import native_bfloat16
from petscan.params.loading import PARAMS_FILE, load_validated, workspace_root
from petscan.pipeline.featurize import featurize_manifests
from petscan.tuning.data import cv_folds, load_tune_data

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/learning.py, also when imported
from learning import evaluate, head  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file")
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped folds")
    args = parser.parse_args(argv)
    root = workspace_root()
    params = load_validated(args.params)
    split_dir = root / params.split.out_dir
    weights_dir = root / params.weights.dir
    print(f"CPU/GPU with native bfloat16: {native_bfloat16()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        for precision in ("float32", "bfloat16"):
            out = Path(tmp) / precision
            done = featurize_manifests(
                {s: split_dir / f"{s}.csv" for s in ("train", "val")},
                out,
                params.model,
                params.featurize.model_copy(update={"precision": precision}),
                weights_path=weights_file(weights_dir),
                weights=read_weights_info(weights_dir),
                class_names=params.data.class_names,
                root=root,
            )
            inputs = sum(d["rows"] * d["views"] for d in done.values())
            seconds = sum(d["timing"]["seconds"] for d in done.values())
            rate = inputs / seconds
            featurize = params.featurize.model_copy(update={"out_dir": str(out)})
            local = params.model_copy(update={"featurize": featurize})
            results[precision] = {"rate": rate, "data": load_tune_data(root, local)}
    a, b = (results[p]["data"].combined()[0] for p in ("float32", "bfloat16"))
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cosine = (
        (flat_a * flat_b).sum(1) / np.linalg.norm(flat_a, axis=1) / np.linalg.norm(flat_b, axis=1)
    )
    _, y, groups = results["float32"]["data"].combined()
    seed = params.tune.seed
    folds = cv_folds(y, groups, args.folds, seed)
    names = results["float32"]["data"].class_names
    auc_title = f"head macro AUC ({args.folds} folds)"
    print(f"\n{'precision':<10} {'inputs/s':>9} {auc_title:>26}")
    aucs = {}
    for precision, r in results.items():
        x = r["data"].combined()[0]
        aucs[precision] = evaluate(head(x, y, groups, params, names, seed), y, groups, folds)["auc"]
        print(f"{precision:<10} {r['rate']:9.1f} {aucs[precision].mean():.3f} +- "
              f"{aucs[precision].std():.3f}")  # fmt: skip
    speedup = results["bfloat16"]["rate"] / results["float32"]["rate"]
    print(f"\nspeed-up bfloat16 / float32: {speedup:.2f}x")
    print(f"cosine similarity per image and view: median {np.median(cosine):.4f}, "
          f"1st percentile {np.percentile(cosine, 1):.4f}")  # fmt: skip
    diff = aucs["bfloat16"].mean() - aucs["float32"].mean()
    spread = max(aucs["bfloat16"].std(), aucs["float32"].std())
    verdict = "inside" if abs(diff) <= spread else "OUTSIDE"
    print(f"AUC difference {diff:+.3f}, {verdict} the folds' spread ({spread:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
