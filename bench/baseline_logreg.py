"""How hard is the data set? A plain logistic regression on 32 x 32 grey pixels.

Patients are split with scikit-learn's `StratifiedGroupKFold` (no patient on both sides);
the script prints the test accuracy of one split and the mean over all folds. On the
synthetic demo data it should stay well below 90%: anything near 100% means a global cue
(image size, sex, bladder) gives the class away and the generator needs fixing.

    .venv/bin/python bench/baseline_logreg.py --raw-dir /tmp/demo_raw
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from petscan.data.folders import list_images
from petscan.data.images import load_rgb
from petscan.params.loading import PARAMS_FILE, load_section

if TYPE_CHECKING:
    from petscan.params.inputs import DataParams


def load_pixels(raw_dir: Path, data: DataParams, size: int):
    """Grey pixels (N, size*size) in [0, 1], labels and patient groups of every image."""
    names = data.class_names
    regex = re.compile(data.patient_pattern) if data.patient_pattern else None
    pixels, labels, groups = [], [], []
    for folder, name in data.classes.items():
        files = list_images(raw_dir / folder)
        if not files:
            raise FileNotFoundError(f"{raw_dir / folder} has no images: generate the data first")
        for path in files:
            grey = Image.fromarray(load_rgb(path)).convert("L").resize((size, size), Image.BILINEAR)
            pixels.append(np.asarray(grey, np.float32).ravel() / 255.0)
            labels.append(names.index(name))
            match = regex.match(path.stem) if regex else None
            groups.append(match.group("patient") if match else str(path))
    return np.stack(pixels), np.asarray(labels), np.asarray(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (section `data`)")
    parser.add_argument("--raw-dir", help="image folder (default: data.raw_dir)")
    parser.add_argument("--size", type=int, default=32, help="side of the downsampled image")
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped stratified folds")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_section("data", args.params)
    raw_dir = Path(args.raw_dir or data.raw_dir)
    start = time.perf_counter()
    x, y, groups = load_pixels(raw_dir, data, args.size)
    seconds = time.perf_counter() - start
    print(f"{len(y)} images of {len(set(groups))} patients from {raw_dir} ({seconds:.1f} s)")
    folds = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    scores = []
    for k, (train, test) in enumerate(folds.split(x, y, groups)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=3000))
        model.fit(x[train], y[train])
        scores.append(float((model.predict(x[test]) == y[test]).mean()))
        if k == 0:
            print(f"test accuracy (fold 1, {len(test)} images): {scores[0]:.3f}")
    print(f"test accuracy over {args.folds} folds: {np.mean(scores):.3f} +- {np.std(scores):.3f}")
    print(f"chance (majority class): {np.bincount(y).max() / len(y):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
