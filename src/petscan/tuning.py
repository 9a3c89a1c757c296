"""Optuna tuning of the head's training recipe on the cached features (`make tune`).

The search space lives in params.yaml `tune.space`, one entry per dimension, keyed by
the dotted params name it sets (`train.loss.gamma`, `model.dropout`, ...). An entry is

* a plain value (a number, a string, a list): the dimension is fixed;
* `{low, high}` with optional `log: true`, `step`, `type: int | float`: a range (whole
  numbers for `low` and `high` make it an integer range);
* `{choices: [...]}`: a categorical choice.

Two entries are special. `train.loss.alpha` expands to one dimension per class
(`train.loss.alpha.0`, `.1`, ... in `data.classes` order); give one spec for all
classes or a list of one spec per class. `schedule.*` describes the piecewise learning
rate as phases: `warmup_lr`, `peak_lr`, `decay_lr`, `final_lr` (rates) and
`warmup_epochs`, `peak_epochs`, `decay_epochs` (durations), which map onto
`train.lr_schedule` as `boundaries = [w, w + p, w + p + d]` and
`values = [warmup_lr, peak_lr, decay_lr, final_lr]`, so boundaries always increase.

A trial samples the space, writes the values into copies of the `train` and `model`
sections and trains the head with `training.fit_cached` (the `train` stage's own
recipe, early stopping included). Its score is a loss-independent metric of the
restored head on val (`tune.objective`, any scalar of `metrics.point_metrics`), or its
mean over `tune.cv_folds` StratifiedGroupKFold folds of train + val (patients kept
together). The same metric is reported every epoch to the pruner.

The study lives in an Optuna storage anchored at the repository root (`tune/optuna.db`,
or `tune/optuna.journal` for several worker processes, or any storage URL), so it
resumes after a stop; `tune.n_trials` is the study's total target of COMPLETE + PRUNED
trials. MLflow gets one parent run per study and one nested child run per trial.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from petscan import config, io, metrics, training

log = logging.getLogger(__name__)

DEFAULT_STUDY = "petscan-head"
DEFAULT_OUT_DIR = "tune"
SQLITE_FILE = "optuna.db"
JOURNAL_FILE = "optuna.journal"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
MINIMIZED = frozenset({"log_loss", "brier", "ece"})
LOSSES = frozenset({"loss", "val_loss"})
PRUNER_NAMES = ("median", "hyperband", "none")
SCHEDULE_RATES = ("warmup_lr", "peak_lr", "decay_lr", "final_lr")
SCHEDULE_EPOCHS = ("warmup_epochs", "peak_epochs", "decay_epochs")
ALPHA_KEY = "train.loss.alpha"
SIGNIFICANT_DIGITS = 4
PLOT_DPI = 110
FEATURES_HINT = "run `dvc repro featurize` first (the study trains on the cached features)"
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# MLflow tags
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_STATE = "optuna.trial_state"
TAG_STORAGE = "optuna.storage"
TAG_KIND = "petscan.run_kind"
TAG_PARENT = "mlflow.parentRunId"


# =========================================================================== search space
@dataclass(frozen=True)
class Dimension:
    """One dimension of `tune.space`: fixed, a float/int range, or a categorical choice."""

    name: str
    kind: str  # fixed | float | int | categorical
    value: Any = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    def sample(self, trial: optuna.Trial) -> Any:
        if self.kind == "fixed":
            return copy.deepcopy(self.value)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def describe(self) -> Any:
        """A plain value for logging (the spec as written in params.yaml)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        spec: dict[str, Any] = {"low": self.low, "high": self.high, "type": self.kind}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_dimension(name: str, spec: Any) -> Dimension:
    """One `tune.space` entry -> a `Dimension`; a clear error names the bad entry."""
    where = f"params.yaml tune.space.{name}"
    if not isinstance(spec, Mapping):
        return Dimension(name, "fixed", value=spec)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Dimension(name, "categorical", choices=tuple(choices))
    if "value" in spec:
        return Dimension(name, "fixed", value=spec["value"])
    if not {"low", "high"} <= set(spec):
        raise ValueError(
            f"{where}: give a plain value, {{low, high[, log, step]}} or {{choices: [...]}}, "
            f"got {dict(spec)!r}"
        )
    unknown = set(spec) - {"low", "high", "log", "step", "type"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    low, high, step, log_scale = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log"))
    whole = _is_whole(low) and _is_whole(high) and (step is None or _is_whole(step))
    kind = spec.get("type") or ("int" if whole else "float")
    if kind not in ("int", "float"):
        raise ValueError(f"{where}: type must be int or float, got {kind!r}")
    if not all(isinstance(v, int | float) for v in (low, high)) or low > high:
        raise ValueError(f"{where}: needs numbers low <= high, got low={low!r} high={high!r}")
    if log_scale and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {low}")
    if log_scale and step is not None:
        raise ValueError(f"{where}: log and step cannot be combined")
    return Dimension(name, kind, low=low, high=high, log=log_scale, step=step)


def parse_space(
    space: Mapping[str, Any], num_classes: int, sections: Mapping[str, Any] | None = None
) -> list[Dimension]:
    """All dimensions of `tune.space`, with `train.loss.alpha` expanded per class.

    `sections` ({"train": ..., "model": ...}) lets every key be checked against the
    params it overrides, so a typo fails before the first trial.
    """
    dims: list[Dimension] = []
    for name, spec in (space or {}).items():
        name = str(name)
        if name == ALPHA_KEY:
            dims.extend(_alpha_dims(spec, num_classes))
        elif name.startswith("schedule."):
            if name.split(".", 1)[1] not in SCHEDULE_RATES + SCHEDULE_EPOCHS:
                raise ValueError(
                    f"params.yaml tune.space.{name}: unknown schedule dimension; use "
                    f"{', '.join('schedule.' + k for k in SCHEDULE_RATES + SCHEDULE_EPOCHS)}"
                )
            dims.append(parse_dimension(name, spec))
        elif name.startswith(("train.", "model.")):
            _check_target(name, sections)
            dims.append(parse_dimension(name, spec))
        else:
            raise ValueError(
                f"params.yaml tune.space.{name}: keys must start with train., model. or "
                "schedule. (the sections a trial overrides)"
            )
    _check_schedule(dims, sections)
    return dims


def _alpha_dims(spec: Any, num_classes: int) -> list[Dimension]:
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != num_classes:
            raise ValueError(
                f"params.yaml tune.space.{ALPHA_KEY} lists {len(spec)} specs for {num_classes} "
                "classes: give one per class (data.classes order) or a single spec for all"
            )
        specs = list(spec)
    else:
        specs = [spec] * num_classes
    return [parse_dimension(f"{ALPHA_KEY}.{i}", s) for i, s in enumerate(specs)]


def _check_target(name: str, sections: Mapping[str, Any] | None) -> None:
    if sections is None:
        return
    node: Any = sections
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(
                f"params.yaml tune.space.{name}: {name} is not a key of params.yaml; "
                "fix the name (dotted path into the train or model section)"
            )
        node = node[part]


def _check_schedule(dims: Sequence[Dimension], sections: Mapping[str, Any] | None) -> None:
    names = {d.name.split(".", 1)[1] for d in dims if d.name.startswith("schedule.")}
    if not names:
        return
    missing = [k for k in SCHEDULE_RATES + SCHEDULE_EPOCHS if k not in names]
    if missing:
        raise ValueError(
            f"params.yaml tune.space: the schedule.* dimensions need all of "
            f"{list(SCHEDULE_RATES + SCHEDULE_EPOCHS)}; missing {missing} (a plain value fixes one)"
        )
    if any(d.name.startswith("train.lr_schedule") for d in dims):
        raise ValueError(
            "params.yaml tune.space: give the learning-rate schedule either as schedule.* "
            "phases or as train.lr_schedule.*, not both"
        )
    for dim in dims:
        key = dim.name.split(".", 1)[1]
        if key in SCHEDULE_EPOCHS:
            least = 0 if key == "warmup_epochs" else 1
            lowest = dim.value if dim.kind == "fixed" else dim.low
            if dim.kind == "categorical":
                lowest = min(dim.choices)
            if lowest is None or lowest < least:
                raise ValueError(
                    f"params.yaml tune.space.{dim.name}: durations must be >= {least} epochs"
                )


def sample(dims: Sequence[Dimension], trial: optuna.Trial) -> dict[str, Any]:
    """Every dimension's value for this trial: {dimension name: value}."""
    return {dim.name: dim.sample(trial) for dim in dims}


def schedule_from_phases(phases: Mapping[str, Any]) -> dict[str, list]:
    """Warm-up/peak/decay/final phases -> `train.lr_schedule` {boundaries, values}."""
    warmup, peak, decay = (int(phases[k]) for k in SCHEDULE_EPOCHS)
    boundaries = [warmup, warmup + peak, warmup + peak + decay]
    values = [float(phases[k]) for k in SCHEDULE_RATES]
    return {"boundaries": boundaries, "values": values}


def overrides_from(values: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """Sampled values -> dotted params overrides (`train.loss.alpha` as one list)."""
    out: dict[str, Any] = {}
    alpha: dict[int, float] = {}
    phases: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith("schedule."):
            phases[name.split(".", 1)[1]] = value
        elif name.startswith(ALPHA_KEY + "."):
            alpha[int(name.rsplit(".", 1)[1])] = float(value)
        else:
            out[name] = value
    if alpha:
        out[ALPHA_KEY] = [alpha[i] for i in range(num_classes)]
    if phases:
        schedule = schedule_from_phases(phases)
        out["train.lr_schedule.boundaries"] = schedule["boundaries"]
        out["train.lr_schedule.values"] = schedule["values"]
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"train.loss.gamma": 2}` -> `{"train": {"loss": {"gamma": 2}}}`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with every dotted override set."""
    out = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


# =========================================================================== objective
def _scalar_metric_names() -> set[str]:
    y = np.array([0, 1, 2])
    names = metrics.point_metrics(y, np.eye(3) * 0.7 + 0.1, ["a", "b", "c"])
    return {k for k in names if "/" not in k and k != "n"}


def objective_direction(name: str) -> str:
    """`minimize` for log_loss, brier, ece; `maximize` for the others."""
    return "minimize" if name in MINIMIZED else "maximize"


def check_objective(name: str) -> None:
    if name in LOSSES:
        raise ValueError(
            f"params.yaml tune.objective: {name!r} is the training loss, which is not comparable "
            "across focal losses with different gamma/alpha; use roc_auc_macro, f1_macro, "
            "balanced_accuracy or log_loss"
        )
    allowed = _scalar_metric_names()
    if name not in allowed:
        raise ValueError(
            f"params.yaml tune.objective: unknown metric {name!r}; choose one of {sorted(allowed)}"
        )


def objective_value(
    name: str, y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> float:
    """The objective metric of `proba` (NaN when the predictions are not finite)."""
    proba = np.asarray(proba, dtype=np.float64)
    if not np.all(np.isfinite(proba)):
        return math.nan
    if name == "roc_auc_macro":  # the default, once per epoch: skip the other metrics
        y, p = metrics.check_inputs(y_true, proba, len(class_names))
        if len(np.unique(y)) < len(class_names):
            return math.nan
        return float(np.mean(metrics.roc_auc_per_class(y, p)))
    return float(metrics.point_metrics(np.asarray(y_true), proba, list(class_names))[name])


def predict_proba(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Probabilities of a head on (N, D) features (one batch; val is small)."""
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)


class EpochObjective(keras.callbacks.Callback):
    """Scores the head on the held-out rows after every epoch and feeds the pruner.

    Adds `val_<objective>` to the epoch logs, keeps every epoch's logs in `rows`
    (flushed to MLflow when the trial ends), reports the value to `trial` at step
    `step_offset + epoch` and raises `optuna.TrialPruned` when the pruner says so.
    A non-finite loss or score stops the training (the trial then fails).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        objective: str,
        class_names: Sequence[str],
        trial: optuna.Trial | None = None,
        step_offset: int = 0,
    ) -> None:
        super().__init__()
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.asarray(y)
        self.objective = objective
        self.class_names = list(class_names)
        self.trial = trial
        self.step_offset = int(step_offset)
        self.rows: list[dict[str, float]] = []
        self.diverged = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        value = objective_value(
            self.objective, self.y, predict_proba(self.model, self.x), self.class_names
        )
        logs[f"val_{self.objective}"] = value
        self.rows.append({"epoch": int(epoch), **{k: float(v) for k, v in logs.items()}})
        if not math.isfinite(value) or not math.isfinite(float(logs.get("loss", 0.0))):
            self.diverged = True
            self.model.stop_training = True
            return
        if self.trial is None:
            return
        step = self.step_offset + int(epoch)
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.objective} {value:.4f})")


# =========================================================================== data
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

    @property
    def views(self) -> int:
        return int(self.train_x.shape[1])

    def combined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train + val as one pool for cross-validation; val's view 0 repeated to V views."""
        val = np.repeat(self.val_x[:, :1], self.views, axis=1)
        x = np.concatenate([self.train_x, val])
        y = np.concatenate([self.train_y, self.val_y])
        groups = np.concatenate([self.train_groups, self.val_groups])
        return x, y, groups


def feature_paths(root: Path, params: Mapping[str, Any]) -> dict[str, Path]:
    split_dir = root / params["split"]["out_dir"]
    features_dir = root / params["featurize"]["out_dir"]
    paths = {}
    for split in ("train", "val"):
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
    from petscan.features import load_features

    check_features(root, params)
    paths = feature_paths(root, params)
    features_dir = paths["train_features"].parent
    train = load_features(features_dir, "train", paths["train_manifest"])
    val = load_features(features_dir, "val", paths["val_manifest"])
    if train.dim != val.dim:
        raise ValueError(
            f"{features_dir}: train has {train.dim}-dim features, val {val.dim}: {FEATURES_HINT}"
        )
    meta = io.read_json(paths["train_meta"])
    return TuneData(
        train_x=np.asarray(train.features),
        train_y=train.labels,
        train_groups=_groups(train.frame),
        val_x=np.asarray(val.features[:, :1]),
        val_y=val.labels,
        val_groups=_groups(val.frame),
        class_names=config.class_names(params["data"]),
        meta={
            "backbone": meta.get("backbone"),
            "source": meta.get("weights_source"),
            "sha256": meta.get("weights_sha256"),
            "random_init": bool(meta.get("weights_random_init", False)),
            "label": meta.get("weights_label"),
            "manifests": [str(paths["train_manifest"]), str(paths["val_manifest"])],
            "fingerprint": _data_fingerprint(paths),
        },
    )


def _data_fingerprint(paths: Mapping[str, Path]) -> str:
    parts = []
    for split in ("train", "val"):
        meta = io.read_json(paths[f"{split}_meta"])
        parts.append(
            f"{meta.get('manifest_sha256')}:{meta.get('weights_sha256')}:"
            f"{meta.get('views')}:{meta.get('dim')}"
        )
    return "|".join(parts)


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


# =========================================================================== settings
@dataclass
class TuneSettings:
    """The `tune` section, resolved (command-line overrides applied)."""

    study_name: str = DEFAULT_STUDY
    n_trials: int = 50
    timeout_s: float | None = None
    seed: int = 0
    objective: str = "roc_auc_macro"
    direction: str = "maximize"
    cv_folds: int = 0
    n_startup_trials: int = 10
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    storage: str | None = None
    max_failures: int = 5
    out_dir: str = DEFAULT_OUT_DIR
    space: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, tune: Mapping[str, Any], **overrides: Any) -> TuneSettings:
        tune = dict(tune or {})
        for key, value in overrides.items():
            if value is not None:
                tune[key] = value
        known = set(cls.__dataclass_fields__)
        unknown = set(tune) - known
        if unknown:
            raise ValueError(
                f"params.yaml tune: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        objective = str(tune.get("objective", cls.objective))
        check_objective(objective)
        tune.setdefault("direction", objective_direction(objective))
        settings = cls(**tune)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not STUDY_NAME_RE.match(self.study_name or ""):
            raise ValueError(
                f"tune.study_name {self.study_name!r}: use letters, digits, '.', '_' or '-'"
            )
        if int(self.n_trials) < 0:
            raise ValueError(f"tune.n_trials must be >= 0, got {self.n_trials}")
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"tune.direction must be minimize or maximize, got {self.direction!r}")
        if int(self.cv_folds) == 1 or int(self.cv_folds) < 0:
            raise ValueError(f"tune.cv_folds must be 0 (hold-out val) or >= 2, got {self.cv_folds}")
        if (self.pruner or {}).get("name", "median") not in PRUNER_NAMES:
            raise ValueError(f"tune.pruner.name must be one of {PRUNER_NAMES}, got {self.pruner}")

    def as_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}


# =========================================================================== storage
def default_storage(root: Path, out_dir: str, workers: int) -> str:
    """`sqlite:///<root>/tune/optuna.db` (1 worker) or `<root>/tune/optuna.journal`."""
    folder = Path(root) / out_dir
    if workers > 1:
        return str(folder / JOURNAL_FILE)
    return f"sqlite:///{folder / SQLITE_FILE}"


def resolve_storage(settings: TuneSettings, root: Path, workers: int) -> str:
    """`--storage` / `tune.storage` if given, else the default for the number of workers."""
    return (
        str(settings.storage)
        if settings.storage
        else default_storage(root, settings.out_dir, workers)
    )


def is_journal(url: str) -> bool:
    """A journal file: a plain path (no `scheme://`) or a `journal:` prefix."""
    return url.startswith("journal:") or "://" not in url


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL (RDB, heartbeat on servers) or a journal-file path."""
    if is_journal(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    # A database server: heartbeats let another machine's crashed trial be failed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)


def storage_label(url: str) -> str:
    """The storage URL without a password (for tags and messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def is_local_file_storage(url: str) -> bool:
    return is_journal(url) or url.startswith("sqlite:")


def make_sampler(
    settings: TuneSettings, worker: int = 0, stored: int = 0
) -> optuna.samplers.BaseSampler:
    """Seeded TPE; the seed also mixes in the worker index and the trials already stored,
    so parallel workers and resumed runs do not replay the same random start-up points."""
    seed = int(
        np.random.SeedSequence([int(settings.seed), int(worker), int(stored)]).generate_state(1)[0]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=int(settings.n_startup_trials),
            multivariate=True,
            constant_liar=True,
        )


def make_pruner(
    pruner_params: Mapping[str, Any] | None, max_steps: int
) -> optuna.pruners.BasePruner:
    """`tune.pruner`: {name: median | hyperband | none, ...keyword arguments of the pruner}."""
    kwargs = dict(pruner_params or {"name": "median"})
    name = kwargs.pop("name", "median")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if name == "hyperband":
            kwargs.setdefault("max_resource", max(1, int(max_steps)))
            return optuna.pruners.HyperbandPruner(**kwargs)
        if name == "none":
            return optuna.pruners.NopPruner()
    except TypeError as err:
        raise ValueError(f"params.yaml tune.pruner: {err}") from err
    raise ValueError(f"params.yaml tune.pruner.name must be one of {PRUNER_NAMES}, got {name!r}")


def count_done(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials: what counts towards `tune.n_trials`."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials FAIL (left by a killed process); only safe before workers start."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        with contextlib.suppress(RuntimeError):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return [t.number for t in stale]


# =========================================================================== MLflow
class Tracker:
    """One MLflow parent run per study and one nested child run per trial (client API,
    so several threads or processes can log at once)."""

    def __init__(
        self, experiment_id: str, parent_run_id: str, study_name: str, tags: dict[str, str]
    ):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.tags = dict(tags)

    def start_trial(
        self, trial: optuna.Trial, values: Mapping[str, Any], overrides: Mapping[str, Any]
    ) -> str:
        from petscan.tracking import param_value

        tags = {
            **self.tags,
            TAG_PARENT: self.parent_run_id,
            TAG_STUDY: self.study_name,
            TAG_TRIAL: str(trial.number),
            TAG_STATE: "running",
            TAG_KIND: "tune_trial",
        }
        run = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"trial-{trial.number:03d}"
        )
        params = {**{k: param_value(v) for k, v in values.items()}}
        params.update({k: param_value(v) for k, v in overrides.items() if k not in params})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def finish_trial(
        self,
        run_id: str,
        trial_number: int,
        state: str,
        value: float,
        rows: Sequence[Mapping[str, float]],
        final: Mapping[str, float],
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, int(row["epoch"]))
            for row in rows
            for k, v in row.items()
            if k != "epoch" and _finite(v)
        ]
        entries += [Metric(k, float(v), now, 0) for k, v in final.items() if _finite(v)]
        if _finite(value):
            entries.append(Metric("objective", float(value), now, 0))
        self._log(run_id, metrics=entries)
        self.client.set_tag(run_id, TAG_STATE, state)
        status = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}.get(
            state, "KILLED"
        )
        self.client.set_terminated(run_id, status=status)
        if state == "complete" and _finite(value):
            self.client.log_metric(
                self.parent_run_id, "trial_objective", float(value), now, trial_number
            )

    def _log(
        self, run_id: str, params: Mapping[str, str] | None = None, metrics: Sequence | None = None
    ) -> None:
        from mlflow.entities import Param

        params_list = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, len(params_list), 100):
            self.client.log_batch(run_id, params=params_list[i : i + 100])
        metrics = list(metrics or [])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parent_run(
    mlflow_params: Mapping[str, Any],
    settings: TuneSettings,
    storage_url: str,
    tags: Mapping[str, str],
) -> tuple[str, str]:
    """(experiment id, parent run id): the study's run, found by tags or created; RUNNING."""
    import mlflow

    from petscan import tracking

    experiment_id = tracking.configure(dict(mlflow_params))
    client = mlflow.MlflowClient()
    label = storage_label(storage_url)
    query = (
        f"tags.`{TAG_STUDY}` = '{settings.study_name}' and tags.`{TAG_KIND}` = 'tune_study' "
        f"and tags.`{TAG_STORAGE}` = '{label.replace(chr(39), '')}'"
    )
    found = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"]
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    run_tags = {
        **tags,
        TAG_STUDY: settings.study_name,
        TAG_STORAGE: label.replace(chr(39), ""),
        TAG_KIND: "tune_study",
    }
    note = tracking.run_description(dict(tags))
    if note:
        run_tags["mlflow.note.content"] = note
    run = client.create_run(experiment_id, tags=run_tags, run_name=f"study-{settings.study_name}")
    from petscan.tracking import flat_params

    described = {k: v for k, v in settings.as_dict().items() if k not in ("space", "storage")}
    Tracker(experiment_id, run.info.run_id, settings.study_name, {})._log(
        run.info.run_id, params={**flat_params({"tune": described}), "tune.storage": label}
    )
    client.log_dict(run.info.run_id, settings.space, "tune_space.json")
    return experiment_id, run.info.run_id


def close_stale_children(
    client: Any, experiment_id: str, parent_run_id: str, study: optuna.Study
) -> None:
    """Children still RUNNING whose trial is no longer running (a killed process): KILLED."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in runs:
        number = int(run.data.tags.get(TAG_TRIAL, -1))
        if number not in running:
            client.set_tag(run.info.run_id, TAG_STATE, "killed")
            client.set_terminated(run.info.run_id, status="KILLED")


# =========================================================================== the objective
class TrialFailed(RuntimeError):
    """A trial whose training diverged or whose score is not a number."""


class Objective:
    """`objective(trial) -> float`: sample, train with `fit_cached`, score on val (or CV)."""

    def __init__(
        self,
        params: Mapping[str, Any],
        data: TuneData,
        settings: TuneSettings,
        tracker: Tracker | None = None,
    ) -> None:
        self.params = params
        self.data = data
        self.settings = settings
        self.tracker = tracker
        self.num_classes = len(data.class_names)
        self.dims = parse_space(
            settings.space, self.num_classes, {"train": params["train"], "model": params["model"]}
        )
        self.pool = data.combined() if int(settings.cv_folds) >= 2 else None
        self.folds = (
            cv_folds(self.pool[1], self.pool[2], int(settings.cv_folds), int(settings.seed))
            if self.pool is not None
            else None
        )

    def __call__(self, trial: optuna.Trial) -> float:
        values = sample(self.dims, trial)
        overrides = overrides_from(values, self.num_classes)
        trial.set_user_attr("overrides", overrides)
        run_id = self.tracker.start_trial(trial, values, overrides) if self.tracker else None
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        state, value, rows, final = "interrupted", math.nan, [], {}
        try:
            value, final = self.evaluate(trial, overrides, rows)
            if "best_epoch" in final:
                trial.set_user_attr("best_epoch", int(final["best_epoch"]))
            if not math.isfinite(value):
                raise TrialFailed(
                    f"{self.settings.objective} is {value}: the training diverged (NaN loss)"
                )
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        except Exception as err:
            state = "failed"
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            raise
        finally:
            epochs = final.get("epochs_run", len(rows))  # rows: one per epoch (and fold)
            with contextlib.suppress(Exception):
                trial.set_user_attr("epochs_run", int(epochs))
            if run_id:
                self.tracker.finish_trial(run_id, trial.number, state, value, rows, final)
            keras.backend.clear_session(free_memory=False)

    def evaluate(
        self,
        trial: optuna.Trial | None,
        overrides: Mapping[str, Any],
        rows: list[dict[str, float]] | None = None,
    ) -> tuple[float, dict[str, float]]:
        """(objective, final metrics) of one set of overrides; epoch logs go to `rows`."""
        rows = rows if rows is not None else []
        sections = {"train": self.params["train"], "model": self.params["model"]}
        params = apply_overrides(sections, overrides)
        if self.folds is None:
            d = self.data
            return self._fit(trial, params, (d.train_x, d.train_y, d.val_x, d.val_y), rows)
        x, y, _ = self.pool
        epochs = int(params["train"]["epochs"])
        scores, finals = [], []
        for k, (tr, va) in enumerate(self.folds):
            fold = (x[tr], y[tr], x[va][:, :1], y[va])
            score, final = self._fit(trial, params, fold, rows, k * epochs, f"fold{k}/")
            scores.append(score)
            finals.append(final)
            if not math.isfinite(score):
                break
        final = {k: v for f in finals for k, v in f.items()}
        final["objective_std"] = float(np.std(scores))
        final["epochs_run"] = int(sum(f[f"fold{k}/epochs_run"] for k, f in enumerate(finals)))
        return float(np.mean(scores)), final

    def _fit(
        self,
        trial: optuna.Trial | None,
        params: Mapping[str, Any],
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        rows: list[dict[str, float]],
        offset: int = 0,
        prefix: str = "",
    ) -> tuple[float, dict[str, float]]:
        train_x, train_y, val_x, val_y = arrays
        names = self.data.class_names
        reporter = EpochObjective(val_x[:, 0], val_y, self.settings.objective, names, trial, offset)
        try:
            result = training.fit_cached(
                train_x,
                train_y,
                val_x,
                val_y,
                params["model"],
                params["train"],
                self.num_classes,
                callbacks=[reporter],
                verbose=0,
            )
        finally:
            for row in reporter.rows:
                rows.append({prefix + k if k != "epoch" else k: v for k, v in row.items()})
        if reporter.diverged:
            return math.nan, {f"{prefix}epochs_run": len(reporter.rows)}
        proba = predict_proba(result.head, np.asarray(val_x[:, 0], dtype=np.float32))
        value = objective_value(self.settings.objective, val_y, proba, names)
        final: dict[str, float] = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch}
        if math.isfinite(value):
            point = metrics.point_metrics(np.asarray(val_y), proba, names)
            final.update({f"final_{k}": float(v) for k, v in point.items() if _scalar(k)})
        return value, {prefix + k: v for k, v in final.items()}


def _scalar(name: str) -> bool:
    return "/" not in name and name != "n"


# =========================================================================== progress
class Progress:
    """A tqdm bar over the study's target: trials counted, best value, pruned/failed, ETA."""

    def __init__(self, target: int, done: int, direction: str, name: str, disable: bool = False):
        self.bar = tqdm(
            total=target,
            initial=min(done, target),
            unit="trial",
            desc=f"tune {name}",
            disable=disable,
            dynamic_ncols=True,
        )
        self.direction = direction

    def refresh(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in COUNTED for t in trials)
        self.bar.n = min(done, self.bar.total)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        postfix = {
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
        }
        if complete:
            pick = min if self.direction == "minimize" else max
            best = pick(complete, key=lambda t: t.value)
            postfix = {"best": f"{best.value:.4f} (#{best.number})", **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.refresh(study)

    def close(self) -> None:
        self.bar.close()


class FailureGuard:
    """Stops the study after `limit` failed trials in a row (a systematic error)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.streak = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.limit > 0 and self.streak >= self.limit:
            self.tripped = True
            study.stop()


# =========================================================================== outputs
def _round(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best trial's overrides in the shape of params.yaml (floats to 4 significant digits)."""
    best = study.best_trial
    overrides = best.user_attrs.get("overrides") or best.params
    return nest({k: _round(v) for k, v in overrides.items()})


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, epochs, params, MLflow run, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else math.nan
        )
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else math.nan,
            "duration_s": round(duration, 3) if _finite(duration) else math.nan,
            "epochs_run": t.user_attrs.get("epochs_run"),
            "last_step": t.last_step,
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        }
        row.update({f"params_{k}": v for k, v in t.params.items()})
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def write_plots(
    study: optuna.Study, out_dir: Path, banner: str | None = None, target_name: str = "Objective"
) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib plots as PNGs; returns (files, notes about skipped plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = {k for t in complete for k in t.params}
    named = functools.partial
    plots: dict[str, Callable] = {
        "optimization_history": named(ovm.plot_optimization_history, target_name=target_name),
        "intermediate_values": ovm.plot_intermediate_values,
        "param_importances": named(ovm.plot_param_importances, target_name=target_name),
        "parallel_coordinate": named(ovm.plot_parallel_coordinate, target_name=target_name),
        "slice": named(ovm.plot_slice, target_name=target_name),
    }
    files, notes = [], []
    for name, plot in plots.items():
        if not complete:
            notes.append(f"{name}: skipped, no complete trial yet")
            continue
        if name == "param_importances" and (len(complete) < 2 or not searched):
            notes.append(f"{name}: skipped, needs >= 2 complete trials (have {len(complete)})")
            continue
        if name in ("parallel_coordinate", "slice") and not searched:
            notes.append(f"{name}: skipped, no searched dimension")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
        except Exception as err:  # a plot must not lose the study's other outputs
            notes.append(f"{name}: skipped, {type(err).__name__}: {err}")
            plt.close("all")
            continue
        fig = np.asarray(axes).ravel()[0].figure
        if banner:
            fig.text(
                0.5, 0.005, banner, ha="center", va="bottom", color="red", fontsize=9, weight="bold"
            )
        path = out_dir / "plots" / f"{name}.png"
        with io.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=PLOT_DPI, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    return files, notes


def write_best_params(path: Path, study: optuna.Study, settings: TuneSettings) -> dict[str, Any]:
    best = study.best_trial
    fragment = best_params(study)
    where = "mean over cv folds" if int(settings.cv_folds) >= 2 else "val"
    header = (
        f"# Best trial of Optuna study '{study.study_name}': trial {best.number}, "
        f"{settings.objective} ({where}) = {best.value:.6g}.\n"
        "# Merge into params.yaml with `make tune APPLY=1` (stages/tune.py --apply).\n"
    )
    io.write_text(path, header + dump_yaml(fragment))
    return fragment


class _FlowListDumper(yaml.SafeDumper):
    """Block mappings, flow lists: `alpha: [0.5, 0.3, 0.2]` as params.yaml writes them."""


_FlowListDumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_FlowListDumper, sort_keys=False, default_flow_style=False)


def write_outputs(
    study: optuna.Study,
    settings: TuneSettings,
    root: Path,
    banner: str | None = None,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """best_params.yaml, trials.csv, plots/*.png and summary.json under `<root>/<out_dir>`."""
    out_dir = Path(root) / settings.out_dir
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "objective": settings.objective,
        "direction": settings.direction,
        "cv_folds": int(settings.cv_folds),
        "n_trials_target": int(settings.n_trials),
        "trials": states,
        **dict(extra or {}),
    }
    files: dict[str, Any] = {}
    io.write_csv(out_dir / "trials.csv", trials_frame(study))
    files["trials"] = out_dir / "trials.csv"
    if states["complete"]:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number)
        summary["best_params"] = write_best_params(out_dir / "best_params.yaml", study, settings)
        files["best_params"] = out_dir / "best_params.yaml"
    files["plots"], notes = (
        write_plots(study, out_dir, banner, settings.objective) if plots else ([], ["not drawn"])
    )
    summary["plot_notes"] = notes
    io.write_json(out_dir / "summary.json", summary)
    files["summary"] = out_dir / "summary.json"
    return {"summary": summary, "files": files}


# =========================================================================== apply
def _round_trip_yaml():
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)

    def null(representer, _):
        return representer.represent_scalar("tag:yaml.org,2002:null", "null")

    def real(representer, value):
        text = repr(float(value))
        if "e" in text and "." not in text.split("e")[0]:  # PyYAML reads 1e-05 as a string
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return representer.represent_scalar("tag:yaml.org,2002:float", text)

    rt.representer.add_representer(type(None), null)
    rt.representer.add_representer(float, real)
    return rt


def apply_best(best: Mapping[str, Any], params_path: str | Path) -> dict[str, tuple[Any, Any]]:
    """Write the best values into params.yaml, keeping its comments and layout.

    Returns {dotted key: (old, new)} for the values that changed. Lists keep their flow
    style; every key must already exist in the file.
    """
    params_path = Path(params_path)
    rt = _round_trip_yaml()
    with params_path.open() as fh:
        data = rt.load(fh)
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in config.flatten(dict(best)).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(f"{params_path} has no {key}: cannot apply the tuned value")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"{params_path} has no {key}: cannot apply the tuned value")
        old = node[leaf]
        plain_old = list(old) if isinstance(old, list) else old
        if plain_old == value:
            continue
        if isinstance(old, list) and isinstance(value, list):
            old.clear()
            old.extend(value)
        else:
            node[leaf] = value
        changed[key] = (plain_old, value)
    with io.atomic_path(params_path) as tmp, tmp.open("w") as fh:
        rt.dump(data, fh)
    return changed


# =========================================================================== running
def study_tags(data: TuneData) -> dict[str, str]:
    """`tracking.run_tags` for the study: code, data manifests, backbone weights."""
    from petscan import tracking

    return tracking.run_tags(data.meta["manifests"], data.meta)


def banner_text(meta: Mapping[str, Any]) -> str | None:
    if meta.get("random_init"):
        return f"{meta.get('label') or 'RANDOM-INIT backbone (not RadImageNet)'}: demo numbers only"
    return None


def open_study(
    settings: TuneSettings,
    storage: optuna.storages.BaseStorage | str,
    max_steps: int,
    worker: int = 0,
) -> optuna.Study:
    """Create or load the study; the sampler is seeded after seeing what is stored."""
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        direction=settings.direction,
        pruner=make_pruner(settings.pruner, max_steps),
        load_if_exists=True,
    )
    study.sampler = make_sampler(settings, worker, len(study.get_trials(deepcopy=False)))
    return study


def check_fingerprint(
    study: optuna.Study, settings: TuneSettings, fingerprint: str, storage_url: str
) -> None:
    """A resumed study must keep its objective, CV setting and data; else a clear error."""
    expected = {
        "objective": settings.objective,
        "cv_folds": int(settings.cv_folds),
        "data": fingerprint,
    }
    stored = {k: study.user_attrs.get(k) for k in expected}
    if all(v is None for v in stored.values()):
        for key, value in expected.items():
            study.set_user_attr(key, value)
        study.set_user_attr("space", settings.space)
        return
    diff = [k for k in expected if stored[k] != expected[k]]
    if diff:
        raise ValueError(
            f"study {settings.study_name!r} in {storage_label(storage_url)} was run with "
            f"{ {k: stored[k] for k in diff} }, now { {k: expected[k] for k in diff} }: its values "
            "are not comparable; pass --study NEW_NAME (or delete the storage) to start afresh"
        )
    if study.user_attrs.get("space") != settings.space:
        log.warning("tune.space changed since study %r started; continuing", settings.study_name)
        study.set_user_attr("space", settings.space)


def max_steps(params: Mapping[str, Any], settings: TuneSettings) -> int:
    epochs = int(params["train"]["epochs"])
    fixed = settings.space.get("train.epochs")
    if isinstance(fixed, int):
        epochs = fixed
    return epochs * max(1, int(settings.cv_folds))


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    timeout_s: float | None,
    callbacks: Sequence[Callable] = (),
    max_failures: int = 5,
) -> FailureGuard:
    """Run trials until `target` COMPLETE + PRUNED trials are stored (or the timeout)."""
    guard = FailureGuard(max_failures)
    if count_done(study) >= target:
        return guard
    study.optimize(
        objective,
        n_trials=None,
        timeout=timeout_s,
        catch=(Exception,),
        callbacks=[optuna.study.MaxTrialsCallback(target, states=COUNTED), guard, *callbacks],
        gc_after_trial=False,
    )
    return guard


def run_study(
    params: Mapping[str, Any],
    root: str | Path | None = None,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    timeout_s: float | None = None,
    apply: bool = False,
    params_path: str | Path | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run or resume the study, write its outputs, optionally apply the best params.

    `params` holds the sections tune, train, model, data, mlflow plus `split.out_dir`
    and `featurize.out_dir`. Returns the summary written to `tune/summary.json`. A
    Ctrl-C keeps every finished trial; the outputs are written and KeyboardInterrupt
    re-raised.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(root) if root is not None else config.repo_root()
    settings = TuneSettings.from_params(
        params["tune"], n_trials=trials, storage=storage, study_name=study_name, timeout_s=timeout_s
    )
    workers = max(1, int(workers))
    check_features(root, params)
    data = load_tune_data(root, params)
    objective = Objective(params, data, settings)  # checks the space before anything is stored
    url = resolve_storage(settings, root, workers)
    study = open_study(settings, make_storage(url), max_steps(params, settings))
    check_fingerprint(study, settings, data.meta["fingerprint"], url)
    stale = fail_stale_trials(study) if is_local_file_storage(url) else []
    if stale:
        log.warning("trials %s were left RUNNING by a stopped process: marked FAIL", stale)
    tags = study_tags(data)
    experiment_id, parent_id = parent_run(params["mlflow"], settings, url, tags)
    tracker = Tracker(experiment_id, parent_id, settings.study_name, tags)
    close_stale_children(tracker.client, experiment_id, parent_id, study)
    target = int(settings.n_trials)
    bar = Progress(
        target, count_done(study), settings.direction, settings.study_name, disable=not progress
    )
    started, status, guard = time.time(), "FINISHED", None
    try:
        if workers == 1:
            objective.tracker = tracker
            guard = optimize(
                study, objective, target, settings.timeout_s, [bar], settings.max_failures
            )
            status = "FAILED" if guard.tripped else status
        else:
            spawn_workers(
                params, root, settings, url, experiment_id, parent_id, workers, bar, study
            )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.refresh(study)
        bar.close()
        seconds = time.time() - started
        result = _finish(study, settings, root, url, data, tracker, seconds, status, plots)
    if guard is not None and guard.tripped:
        last = [t for t in study.trials if t.state == TrialState.FAIL][-1].user_attrs.get("error")
        raise RuntimeError(
            f"{settings.max_failures} trials failed in a row (last: {last}); "
            "see tune/trials.csv and the MLflow child runs"
        )
    if apply:
        if "best_params" not in result:
            raise RuntimeError("no complete trial yet: nothing to apply")
        changed = apply_best(result["best_params"], params_path or config.PARAMS_FILE)
        result["applied"] = {k: list(v) for k, v in changed.items()}
    return result


def _finish(study, settings, root, url, data, tracker, seconds, status, plots) -> dict[str, Any]:
    """Write the outputs, log them and the study's counts to the parent run, close it."""
    extra = {
        "storage": storage_label(url),
        "mlflow_parent_run_id": tracker.parent_run_id,
        "seconds_this_run": round(seconds, 1),
        "random_init": bool(data.meta.get("random_init")),
    }
    outputs = write_outputs(study, settings, root, banner_text(data.meta), extra, plots)
    client, run_id = tracker.client, tracker.parent_run_id
    summary = outputs["summary"]
    now = int(time.time() * 1000)
    step = count_done(study)
    for key, value in (
        ("best_value", summary.get("best_value")),
        *((f"n_{k}", v) for k, v in summary["trials"].items()),
    ):
        if _finite(value):
            client.log_metric(run_id, key, float(value), now, step)
    files = outputs["files"]
    for key in ("best_params", "trials", "summary"):
        if key in files:
            client.log_artifact(run_id, str(files[key]))
    for path in files["plots"]:
        client.log_artifact(run_id, str(path), "plots")
    client.set_terminated(run_id, status=status)
    return summary


# =========================================================================== workers
def spawn_workers(
    params, root, settings, url, experiment_id, parent_id, workers, bar, study
) -> None:
    """Start `workers` processes on the same storage and parent run; poll for progress."""
    config_path = Path(root) / settings.out_dir / f".worker-{settings.study_name}.json"
    io.write_json(
        config_path,
        {
            "params": dict(params),
            "root": str(root),
            "settings": settings.as_dict(),
            "storage": url,
            "experiment_id": experiment_id,
            "parent_run_id": parent_id,
            "workers": workers,
        },
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "petscan.tuning",
                "--config",
                str(config_path),
                "--worker",
                str(i),
            ],
            env=env,
        )
        for i in range(workers)
    ]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.refresh(study)
    except KeyboardInterrupt:
        for p in procs:  # the terminal sent SIGINT to them too; wait for them to record it
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        raise
    codes = [p.returncode for p in procs]
    if any(codes):
        raise RuntimeError(f"tuning workers exited with codes {codes}; see their messages above")


def run_worker(config_path: str | Path, worker: int) -> int:
    """One worker process: load the features, optimize its share on the shared storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = io.read_json(config_path)
    params, root = spec["params"], Path(spec["root"])
    settings = TuneSettings.from_params(spec["settings"])
    data = load_tune_data(root, params)
    storage = make_storage(spec["storage"])
    study = open_study(settings, storage, max_steps(params, settings), worker=worker + 1)
    from petscan import tracking

    tracking.use_store(params["mlflow"])
    tags = study_tags(data)
    tracker = Tracker(spec["experiment_id"], spec["parent_run_id"], settings.study_name, tags)
    objective = Objective(params, data, settings, tracker)
    guard = optimize(
        study, objective, int(settings.n_trials), settings.timeout_s, (), settings.max_failures
    )
    return 3 if guard.tripped else 0


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A tuning worker process (started by stages/tune.py --workers N)."
    )
    parser.add_argument("--config", required=True, help="the JSON file written by the main process")
    parser.add_argument("--worker", type=int, default=0, help="worker index (seeds its sampler)")
    args = parser.parse_args(argv)
    try:
        return run_worker(args.config, args.worker)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(worker_main())
