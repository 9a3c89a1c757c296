"""What a study trains on: the cached train/val features, labels and patient groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petscan.data.features import load_features
from petscan.data.folds import patient_groups, pool_splits
from petscan.handoff.records import FeatureMeta, WeightsInfo, feature_files
from petscan.utils.errors import BadInputError, MissingInputError

FEATURES_HINT = "run `dvc repro featurize` first (the study trains on the cached features)"
STUDY_SPLITS = ("train", "val")  # a study never sees test


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
    weights: WeightsInfo | None = None  # the backbone the features came from
    split_dir: str = ""  # the manifests' folder (`tracking.provenance.data_hash` reads it)
    fingerprint: str = ""  # a resumed study must see the same data (`_data_fingerprint`)

    def combined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train + val as one pool for cross-validation (`data.folds.pool_splits`)."""
        return pool_splits(
            self.train_x, self.train_y, self.train_groups, self.val_x, self.val_y, self.val_groups
        )


def feature_paths(root: Path, params: Any) -> dict[str, Path]:
    """`{split}_manifest`, `{split}_features` and `{split}_meta` of train and val; `params`
    has `split.out_dir` and `featurize.out_dir` (a `StageParams` of the tune command)."""
    split_dir = root / params.split.out_dir
    features_dir = root / params.featurize.out_dir
    paths = {}
    for split in STUDY_SPLITS:
        paths[f"{split}_manifest"] = split_dir / f"{split}.csv"
        paths[f"{split}_features"], paths[f"{split}_meta"] = feature_files(features_dir, split)
    return paths


def check_features(root: Path, params: Any) -> None:
    """FileNotFoundError telling to run featurize when the cache or manifests are missing."""
    for path in feature_paths(root, params).values():
        if not path.is_file():
            raise MissingInputError(f"{path} not found: {FEATURES_HINT}")


def load_tune_data(root: Path, params: Any) -> TuneData:
    """Train and val features (checked by `data.features.load_features`) for the study;
    `params` has `split.out_dir`, `featurize.out_dir` and `data`."""
    check_features(root, params)
    paths = feature_paths(root, params)
    features_dir = paths["train_features"].parent
    train = load_features(features_dir, "train", paths["train_manifest"])
    val = load_features(features_dir, "val", paths["val_manifest"])
    if train.dim != val.dim:
        raise BadInputError(
            f"{features_dir}: train has {train.dim}-dim features, val {val.dim}: {FEATURES_HINT}"
        )
    return TuneData(
        train_x=np.asarray(train.features),
        train_y=train.labels,
        train_groups=patient_groups(train.frame),
        val_x=np.asarray(val.features[:, :1]),
        val_y=val.labels,
        val_groups=patient_groups(val.frame),
        class_names=params.data.class_names,
        weights=train.meta.weights,
        split_dir=str(paths["train_manifest"].parent),
        fingerprint=_data_fingerprint([train.meta, val.meta]),
    )


def _data_fingerprint(metas: list[FeatureMeta]) -> str:
    """Manifest and weights hashes and feature shapes: a resumed study must see the same."""
    return "|".join(
        f"{m.manifest_sha256}:{m.weights.weights_sha256 if m.weights else None}:{m.views}:{m.dim}"
        for m in metas
    )
