"""The `tune` section resolved into `TuneSettings`, and the choice of objective metric."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from petscan.evaluation import metrics
from petscan.utils.errors import ParamsError

DEFAULT_STUDY = "petscan-head"
DEFAULT_OUT_DIR = "tune"
MINIMIZED = frozenset({"log_loss", "brier", "ece"})
LOSSES = frozenset({"loss", "val_loss"})
PRUNER_NAMES = ("median", "hyperband", "none")
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_scalar_metric(name: str) -> bool:
    """A study-wide scalar of `metrics.point_metrics` (not per class, not the count `n`)."""
    return "/" not in name and name != "n"


def scalar_metric_names() -> set[str]:
    """The names `tune.objective` may take: the scalars of `metrics.point_metrics`."""
    names = metrics.point_metrics(np.array([0, 1, 2]), np.eye(3) * 0.7 + 0.1, ["a", "b", "c"])
    return {k for k in names if is_scalar_metric(k)}


def objective_direction(name: str) -> str:
    """`minimize` for log_loss, brier, ece; `maximize` for the others."""
    return "minimize" if name in MINIMIZED else "maximize"


def check_objective(name: str) -> None:
    """ValueError unless `name` is a loss-independent scalar metric."""
    if name in LOSSES:
        raise ParamsError(
            f"params.yaml tune.objective: {name!r} is the training loss, which is not comparable "
            "across focal losses with different gamma/alpha; use roc_auc_macro, f1_macro, "
            "balanced_accuracy or log_loss"
        )
    allowed = scalar_metric_names()
    if name not in allowed:
        raise ParamsError(
            f"params.yaml tune.objective: unknown metric {name!r}; choose one of {sorted(allowed)}"
        )


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
        """Settings from the `tune` section; `overrides` that are not None replace its keys."""
        tune = {**dict(tune or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in fields(cls)}
        unknown = set(tune) - known
        if unknown:
            raise ParamsError(
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
            raise ParamsError(
                f"tune.study_name {self.study_name!r}: use letters, digits, '.', '_' or '-'"
            )
        if int(self.n_trials) < 0:
            raise ParamsError(f"tune.n_trials must be >= 0, got {self.n_trials}")
        if self.direction not in ("minimize", "maximize"):
            raise ParamsError(
                f"tune.direction must be minimize or maximize, got {self.direction!r}"
            )
        if int(self.cv_folds) == 1 or int(self.cv_folds) < 0:
            raise ParamsError(
                f"tune.cv_folds must be 0 (hold-out val) or >= 2, got {self.cv_folds}"
            )
        if (self.pruner or {}).get("name", "median") not in PRUNER_NAMES:
            raise ParamsError(f"tune.pruner.name must be one of {PRUNER_NAMES}, got {self.pruner}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # deep copies the dicts
