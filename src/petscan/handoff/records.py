"""The files that pass between stages: one typed reader and one writer for each.

    file                                  written by     read by
    <weights.dir>/weights.json            fetch_weights  featurize, train (`WeightsInfo`)
    <split.out_dir>/{split}.csv           split          featurize, train, evaluate, tune
    <featurize.out_dir>/{split}.json      featurize      train, tune (`FeatureMeta`)
    <train.out_dir>/train.json            train          evaluate, explain, plot (`TrainInfo`)
    <train.out_dir>/history.csv           train          plot (`HISTORY_COLUMNS`)
    <evaluate.out_dir>/predictions_*.csv  evaluate       plot (`read_predictions`)
    <explain.out_dir>/gallery/gallery.csv explain        plot
    <evaluate.out_dir>/metrics.json       evaluate       DVC: `dvc metrics show`, `dvc exp show`
    <evaluate.out_dir>/metrics_full.json  evaluate       readers, the model version's notes

Each field has one name from end to end. The backbone's provenance is `WeightsInfo`:
`backbone`, `weights_source`, `weights_sha256`, `random_init`, `weights_label`, under these
names in every file above, in the MLflow run and model-version tags and in the Optuna
study's attributes. `banner` is the one random-init warning line, wherever it is shown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petscan.utils.errors import BadInputError, MissingInputError
from petscan.utils.io import read_json, sha256_file, write_json

WEIGHTS_FILE = "weights.h5"
WEIGHTS_META_FILE = "weights.json"
TRAIN_INFO_FILE = "train.json"

RANDOM_LABEL = "RANDOM-INIT backbone (not RadImageNet)"
IMAGENET_LABEL = "ImageNet (not RadImageNet)"
DEMO_LABEL = "DEMO backbone pretrained on synthetic PET (not RadImageNet)"
DEFAULT_LABEL = "RadImageNet"

WEIGHTS_HINT = "run `dvc repro fetch_weights` (or `python stages/fetch_weights.py --force`)"
FEATURES_HINT = "run `dvc repro featurize`"
TRAIN_HINT = "run the train stage first (`dvc repro train`)"


def _read(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingInputError(f"{path} not found: {hint}")
    return read_json(path)


def _require(values: Mapping[str, Any], keys: tuple[str, ...], path: Path, hint: str) -> None:
    missing = [key for key in keys if key not in values]
    if missing:
        raise BadInputError(f"{path} lacks {missing}: {hint}")


# ----------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsInfo:
    """Which backbone weights a result comes from; carried by every later file."""

    backbone: str
    weights_source: str  # "file:/x.h5", "url:https://...", "random", "imagenet", ...
    weights_sha256: str
    random_init: bool  # True: a seeded random-init backbone, not RadImageNet
    weights_label: str  # "RadImageNet", RANDOM_LABEL, IMAGENET_LABEL or a source's label

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WeightsInfo:
        return cls(
            backbone=str(values["backbone"]),
            weights_source=str(values["weights_source"]),
            weights_sha256=str(values["weights_sha256"]),
            random_init=bool(values["random_init"]),
            weights_label=str(values["weights_label"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def banner(self) -> str | None:
        return banner(self.to_dict())


WEIGHTS_FIELDS = tuple(f.name for f in dataclasses.fields(WeightsInfo))


def banner(record: Mapping[str, Any]) -> str | None:
    """The line that labels results of any backbone but RadImageNet's, or None for RadImageNet.

    A random-init backbone, the demo's synthetic-PET backbone and ImageNet weights all get
    their label shown wherever a result is (figures, console, web page). `record` is
    anything carrying the `WeightsInfo` fields (weights.json, train.json, metrics.json,
    MLflow tags, where `random_init` is the string "true").
    """
    flag = record.get("random_init")
    label = record.get("weights_label")
    if flag is True or flag == "true":
        return str(label or RANDOM_LABEL)
    if label and label != DEFAULT_LABEL:
        return str(label)
    return None


def weights_file(weights_dir: str | Path) -> Path:
    """`<weights_dir>/weights.h5`, the path every later stage loads."""
    return Path(weights_dir) / WEIGHTS_FILE


def read_weights_meta(weights_dir: str | Path) -> dict[str, Any]:
    """All of `weights.json` (the `WeightsInfo` fields first, then what fetch_weights
    needs to tell whether it is up to date), checked for the `WeightsInfo` fields."""
    path = Path(weights_dir) / WEIGHTS_META_FILE
    meta = _read(path, WEIGHTS_HINT)
    _require(meta, WEIGHTS_FIELDS, path, WEIGHTS_HINT)
    return meta


def read_weights_info(weights_dir: str | Path) -> WeightsInfo:
    return WeightsInfo.from_dict(read_weights_meta(weights_dir))


def write_weights_meta(
    weights_dir: str | Path, info: WeightsInfo, details: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `weights.json`: `info`'s fields, then `details` (settings, size, layers...)."""
    meta = {**info.to_dict(), **{k: v for k, v in details.items() if k not in WEIGHTS_FIELDS}}
    write_json(Path(weights_dir) / WEIGHTS_META_FILE, meta)
    return meta


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureMeta:
    """`<featurize.out_dir>/{split}.json`: what `{split}.npy` (rows x views x dim) holds."""

    split: str
    rows: int
    views: int
    dim: int
    manifest: str
    manifest_sha256: str  # `load_features` refuses the cache of another manifest
    weights: WeightsInfo | None = None  # None: features made without a backbone (tests)
    preprocessing: str | None = None
    resize: str | None = None
    input_size: list[int] | None = None
    augment_views: int = 0
    augmented: bool = False
    augmentation: dict[str, Any] | None = None
    seed: int | None = None
    precision: str = "float32"
    class_names: list[str] | None = None
    health: dict[str, float] = field(default_factory=dict)
    dtype: str = "float32"

    REQUIRED = ("split", "rows", "views", "dim", "manifest", "manifest_sha256")

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        weights = values.pop("weights")
        return {**values, **(weights.to_dict() if weights else {})}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"weights"}
        weights = (
            WeightsInfo.from_dict(values) if all(k in values for k in WEIGHTS_FIELDS) else None
        )
        return cls(weights=weights, **{k: v for k, v in values.items() if k in names})


def feature_files(features_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(`{split}.npy`, `{split}.json`) in `features_dir`."""
    return Path(features_dir) / f"{split}.npy", Path(features_dir) / f"{split}.json"


def read_feature_meta(features_dir: str | Path, split: str) -> FeatureMeta:
    path = feature_files(features_dir, split)[1]
    values = _read(path, FEATURES_HINT)
    _require(values, FeatureMeta.REQUIRED, path, FEATURES_HINT)
    return FeatureMeta.from_dict(values)


def write_feature_meta(features_dir: str | Path, meta: FeatureMeta) -> Path:
    path = feature_files(features_dir, meta.split)[1]
    write_json(path, meta.to_dict())
    return path


def manifest_meta(
    split: str, manifest: str | Path, shape: tuple[int, int, int], **more: Any
) -> FeatureMeta:
    """The `FeatureMeta` of features of `shape` computed from `manifest`."""
    rows, views, dim = shape
    manifest = Path(manifest)
    return FeatureMeta(
        split=split,
        rows=int(rows),
        views=int(views),
        dim=int(dim),
        manifest=manifest.as_posix(),
        manifest_sha256=sha256_file(manifest),
        **more,
    )


# ----------------------------------------------------------------------------- train

# the per-epoch values: columns of <train.out_dir>/history.csv (train -> plot) and the
# MLflow metrics of a training run
EPOCH_METRICS = (
    "loss",
    "data_loss",
    "accuracy",
    "val_loss",
    "val_data_loss",
    "val_accuracy",
    "val_roc_auc_macro",
)
HISTORY_COLUMNS = ("epoch", *EPOCH_METRICS, "learning_rate")


@dataclass(frozen=True)
class TrainInfo:
    """`<train.out_dir>/train.json`: the trained model and what it was trained from.

    Same inputs, same bytes: nothing run-dependent (times, run ids) goes in; evaluate and
    plot find the MLflow run by `model_sha256`.
    """

    mode: str  # "cached" or "end_to_end"
    weights: WeightsInfo
    class_names: list[str]
    seed: int
    best_epoch: int  # 0-based, as in history.csv; the model holds this epoch's weights
    epochs_run: int
    stopped_early: bool
    model_sha256: str
    best: dict[str, float] = field(default_factory=dict)  # history.csv's row at best_epoch
    collapse: dict[str, Any] = field(default_factory=dict)  # training.collapse.check_collapse
    details: dict[str, Any] = field(default_factory=dict)  # class weights, views, ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            **self.weights.to_dict(),
            "class_names": list(self.class_names),
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            **{f"best_{name}": value for name, value in self.best.items()},
            "collapse": self.collapse,
            **self.details,
            "model_sha256": self.model_sha256,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainInfo:
        named = {"mode", "class_names", "seed", "best_epoch", "epochs_run", "stopped_early"}
        named |= {"model_sha256", "collapse", *WEIGHTS_FIELDS}
        best_keys = {k for k in values if k.startswith("best_") and k != "best_epoch"}
        return cls(
            mode=values["mode"],
            weights=WeightsInfo.from_dict(values),
            class_names=list(values["class_names"]),
            seed=int(values["seed"]),
            best_epoch=int(values["best_epoch"]),
            epochs_run=int(values["epochs_run"]),
            stopped_early=bool(values["stopped_early"]),
            model_sha256=values["model_sha256"],
            best={k.removeprefix("best_"): v for k, v in values.items() if k in best_keys},
            collapse=dict(values.get("collapse") or {}),
            details={k: v for k, v in values.items() if k not in named and k not in best_keys},
        )


TRAIN_REQUIRED = ("mode", "class_names", "seed", "best_epoch", "epochs_run", "stopped_early")


def read_train_info(train_dir: str | Path) -> TrainInfo:
    path = Path(train_dir) / TRAIN_INFO_FILE
    values = _read(path, TRAIN_HINT)
    _require(values, (*TRAIN_REQUIRED, *WEIGHTS_FIELDS, "model_sha256"), path, TRAIN_HINT)
    return TrainInfo.from_dict(values)


def write_train_info(train_dir: str | Path, info: TrainInfo) -> Path:
    path = Path(train_dir) / TRAIN_INFO_FILE
    write_json(path, info.to_dict())
    return path
