"""Scratch stores and a random feature cache of the demo's shapes, for `tune_speed.py`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from petscan.params.schema import Params

DEMO_ROWS = {"train": 1072, "val": 58, "test": 58}


@contextlib.contextmanager
def scratch_stores() -> Iterator[Path]:
    """A temporary root for the Optuna storage and the MLflow store of the benchmark."""
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        saved = {k: os.environ.get(k) for k in ("PETSCAN_ROOT", "MLFLOW_TRACKING_URI")}
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        try:
            yield Path(tmp)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def write_random_cache(root: Path, params: Params) -> None:
    """Random features + manifests of the demo's shapes, in the real cache format (test: the
    manifest only, the study never reads its features)."""
    import numpy as np
    import pandas as pd

    from petscan.data.features import save_features
    from petscan.handoff.records import WeightsInfo
    from petscan.model.backbones import backbone_spec

    rng = np.random.default_rng(0)
    dim = backbone_spec(params.model.backbone).feature_dim
    names = params.data.class_names
    means = rng.normal(0.0, 0.3, size=(len(names), dim)).astype(np.float32)
    views = {"train": 1 + params.featurize.augment_views, "val": 1}
    for split, rows in DEMO_ROWS.items():
        labels = np.arange(rows) % len(names)
        frame = pd.DataFrame(
            {
                "path": [f"data/raw/x/{split}-{i}_v1.png" for i in range(rows)],
                "class": [names[k] for k in labels],
                "label": labels,
                "patient": [f"{split}-{i // 2}" for i in range(rows)],
                "sha256": ["0" * 64] * rows,
            }
        )
        manifest = root / "split" / f"{split}.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(manifest, index=False)
        if split not in views:
            continue
        x = means[labels][:, None, :] + rng.normal(0, 1, (rows, views[split], dim))
        weights = WeightsInfo(
            backbone=params.model.backbone,
            weights_source="random features (benchmark)",
            weights_sha256="0" * 64,
            random_init=True,
            weights_label="random features (benchmark)",
        )
        save_features(root / "features", split, x, manifest, weights)
