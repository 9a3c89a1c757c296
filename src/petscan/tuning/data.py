"""What a study trains on: the cached train/val features, labels and patient groups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petscan import config, io

FEATURES_HINT = "run `dvc repro featurize` first (the study trains on the cached features)"
SPLITS = ("train", "val")


@dataclass
class TuneData:
    """Cached features of train and val with labels and patient groups."""

    train_x: np.ndarray  # (N, V, D)
    train_y: np.ndarray
    train_groups: np.ndarray
    val_x: np.ndarray  # (M, 1, D)
    val_y: np.ndarray
    val_groups: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def combined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train + val as one pool for cross-validation; val's view 0 repeated to V views."""
        val = np.repeat(self.val_x[:, :1], self.train_x.shape[1], axis=1)
        x = np.concatenate([self.train_x, val])
        y = np.concatenate([self.train_y, self.val_y])
        groups = np.concatenate([self.train_groups, self.val_groups])
        return x, y, groups


def feature_paths(root: Path, params: Mapping[str, Any]) -> dict[str, Path]:
    """`{split}_manifest`, `{split}_features` and `{split}_meta` of train and val."""
    split_dir = root / params["split"]["out_dir"]
    features_dir = root / params["featurize"]["out_dir"]
    paths = {}
    for split in SPLITS:
        paths[f"{split}_manifest"] = split_dir / f"{split}.csv"
        paths[f"{split}_features"] = features_dir / f"{split}.npy"
        paths[f"{split}_meta"] = features_dir / f"{split}.json"
    return paths


def check_features(root: Path, params: Mapping[str, Any]) -> None:
    """FileNotFoundError telling to run featurize when the cache or manifests are missing."""
    for path in feature_paths(root, params).values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {FEATURES_HINT}")


def _groups(frame: pd.DataFrame) -> np.ndarray:
    column = "patient" if "patient" in frame.columns else "path"
    return frame[column].astype(str).to_numpy()


def load_tune_data(root: Path, params: Mapping[str, Any]) -> TuneData:
    """Train and val features (checked by `features.load_features`) for the study."""
    from petscan.features import load_features  # imports TensorFlow

    check_features(root, params)
    paths = feature_paths(root, params)
    features_dir = paths["train_features"].parent
    train = load_features(features_dir, "train", paths["train_manifest"])
    val = load_features(features_dir, "val", paths["val_manifest"])
    if train.dim != val.dim:
        raise ValueError(
            f"{features_dir}: train has {train.dim}-dim features, val {val.dim}: {FEATURES_HINT}"
        )
    metas = {split: io.read_json(paths[f"{split}_meta"]) for split in SPLITS}
    return TuneData(
        train_x=np.asarray(train.features),
        train_y=train.labels,
        train_groups=_groups(train.frame),
        val_x=np.asarray(val.features[:, :1]),
        val_y=val.labels,
        val_groups=_groups(val.frame),
        class_names=config.class_names(params["data"]),
        meta={
            **_weights_meta(metas["train"]),
            "split_dir": str(paths["train_manifest"].parent),  # tracking.data_hash reads it
            "fingerprint": _data_fingerprint(metas),
        },
    )


def _weights_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone weights recorded in the cache, as `tracking.run_tags` reads them."""
    return {
        "backbone": meta.get("backbone"),
        "source": meta.get("weights_source"),
        "sha256": meta.get("weights_sha256"),
        "random_init": bool(meta.get("weights_random_init", False)),
        "label": meta.get("weights_label"),
    }


def _data_fingerprint(metas: Mapping[str, Mapping[str, Any]]) -> str:
    """Manifest and weights hashes and feature shapes: a resumed study must see the same."""
    return "|".join(
        f"{m.get('manifest_sha256')}:{m.get('weights_sha256')}:{m.get('views')}:{m.get('dim')}"
        for m in (metas[split] for split in SPLITS)
    )


def cv_folds(
    labels: np.ndarray, groups: np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """StratifiedGroupKFold (shuffled, seeded) folds; patients never straddle a fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"params.yaml tune.cv_folds must be 0 (hold-out val) or >= 2, got {k}")
    if len(np.unique(groups)) < k:
        raise ValueError(f"tune.cv_folds={k} but only {len(np.unique(groups))} patients")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    classes = np.unique(labels)
    for i, (train_idx, _) in enumerate(folds):
        if len(np.unique(labels[train_idx])) != len(classes):
            raise ValueError(f"cv fold {i} lacks a class in its training part: lower tune.cv_folds")
    return folds
