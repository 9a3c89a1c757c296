"""How much does the size of the pretraining corpus matter? A learning curve for `pet_demo`.

For each size (patients drawn from the `pretrain.corpus` set; `all` = the whole corpus) the
backbone is pretrained with params `pretrain` (`petscan.demo.pretrain.run_pretrain`, written to
bench/results/pretrain_curve/), then frozen: its pooled features of the demo's train + val
images (view 0, decoded as featurize does) go into a standardized logistic regression on the
same five patient-grouped folds as bench/learning.py (`tune.seed`). Prints one row per size:
patients and images, pretraining minutes, the held-out pretraining scores, and the demo's
macro AUC and accuracy (mean +- sd over folds). `--shipped` adds the committed file as a row
without retraining it. The demo's test split is never read.

    .venv/bin/python bench/pretrain_curve.py --patients 300 1000 --shipped   # after make run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from petscan.data.images import load_resized
from petscan.demo.pretrain import run_pretrain
from petscan.model.network import build_feature_extractor
from petscan.params.loading import PARAMS_FILE, load_validated, workspace_root
from petscan.tuning.data import cv_folds
from petscan.utils.io import read_json

if TYPE_CHECKING:
    from petscan.params.schema import Params

OUT = Path("bench/results/pretrain_curve")


def demo_images(root: Path, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, patients) of the demo's train + val manifests."""
    split_dir = root / params.split.out_dir
    frame = pd.concat(pd.read_csv(split_dir / f"{s}.csv") for s in ("train", "val"))
    size = tuple(params.model.input_size)
    images = np.stack([load_resized(root / p, size, params.model.resize) for p in frame.path])
    return images, frame["label"].to_numpy(), frame["patient"].astype(str).to_numpy()


def downstream(weights: Path, params: Params, data, folds) -> dict[str, float]:
    images, y, _ = data
    model_params = params.model.model_copy(update={"backbone": "pet_demo"})
    features = build_feature_extractor(model_params, weights).predict(images, verbose=0)
    auc, accuracy = [], []
    for train, test in folds:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        proba = probe.fit(features[train], y[train]).predict_proba(features[test])
        auc.append(roc_auc_score(y[test], proba, multi_class="ovr"))
        accuracy.append(float((proba.argmax(1) == y[test]).mean()))
    return {
        "auc": float(np.mean(auc)),
        "auc_sd": float(np.std(auc)),
        "accuracy": float(np.mean(accuracy)),
        "accuracy_sd": float(np.std(accuracy)),
    }


def row(name: str, record: dict, scores: dict[str, float]) -> str:
    corpus, val = record["corpus"], record["val_scores"]
    lesion, label = (val.get(k, float("nan")) for k in ("lesion_cell_auc", "label_auc_macro"))
    minutes = record["seconds"]["train"] / 60
    return (
        f"{name:>8} {corpus['patients']:>8} {record['train_images']:>7} {minutes:>6.1f}"
        f"  {lesion:>6.3f} {label:>6.3f}"
        f"  {record['selection_probe_auc_macro']:>6.3f}"
        f"  {scores['auc']:.3f} +- {scores['auc_sd']:.3f}"
        f"  {scores['accuracy']:.3f} +- {scores['accuracy_sd']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file")
    parser.add_argument(
        "--patients", nargs="*", type=int, default=[300, 1000], help="corpus sizes to pretrain"
    )
    parser.add_argument("--shipped", action="store_true", help="add the committed file as a row")
    args = parser.parse_args(argv)
    root = workspace_root()
    params = load_validated(args.params)
    data = demo_images(root, params)
    folds = cv_folds(data[1], data[2], 5, params.tune.seed)
    print(
        f"{'size':>8} {'patients':>8} {'images':>7} {'min':>6}  {'lesion':>6} {'label':>6}"
        f"  {'select':>6}  {'demo macro AUC':>14}  {'demo accuracy':>14}"
    )
    print("(lesion, label: held-out pretraining patients; select: the selection set's probe)")
    for patients in args.patients:
        out = root / OUT / f"pet_demo_{patients}.h5"
        start = time.perf_counter()
        record = run_pretrain(
            params.pretrain,
            params.synthetic.base_height,
            out,
            root / params.pretrain.work_dir,
            patients=patients,
            command=f"bench/pretrain_curve.py --patients {patients}",
        )
        print(row(str(patients), record, downstream(out, params, data, folds)), flush=True)
        print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.shipped:
        shipped = root / params.weights.demo.path
        record = read_json(shipped.with_suffix(".json"))
        print(row("shipped", record, downstream(shipped, params, data, folds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
