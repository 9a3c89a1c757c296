"""Optuna tuning of the head's training recipe on the cached features (`make tune`).

One module per concern:

* `space`: the search space of `tune.space` and how sampled values become overrides;
* `settings`: the `tune` section as `TuneSettings`, the choice of objective metric;
* `data`: the cached train/val features a study trains on, cross-validation folds;
* `objective`: one trial (train the head with `training.fit_cached`, score it, prune);
* `storage`: where the study lives (SQLite, journal file, server), sampler and pruner;
* `tracking`: the MLflow parent run of a study and a child run per trial;
* `study`: opening/resuming a study, the trial loop, failure guard, progress bar;
* `workers`: several worker processes on one study (`python -m petscan.tuning`);
* `report`: best_params.yaml, trials.csv, plots, summary.json;
* `apply`: writing the best values into params.yaml (comments kept);
* `run`: `run_tune`, the whole of `make tune`.

The names below are imported from their module on first use, so reading the settings
or the storage (`stages/tune.py --show-storage`) does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "space": (
        "Dimension",
        "apply_overrides",
        "nest",
        "overrides_from",
        "parse_dimension",
        "parse_space",
        "sample",
        "schedule_from_phases",
    ),
    "settings": ("TuneSettings", "check_objective", "objective_direction"),
    "data": ("TuneData", "check_features", "cv_folds", "feature_paths", "load_tune_data"),
    "objective": ("EpochObjective", "Objective", "TrialFailed", "objective_value"),
    "storage": (
        "count_done",
        "default_storage",
        "fail_stale_trials",
        "make_pruner",
        "make_sampler",
        "make_storage",
        "resolve_storage",
        "storage_label",
    ),
    "tracking": ("Tracker", "close_stale_children", "parent_run"),
    "study": ("FailureGuard", "Progress", "check_fingerprint", "open_study", "optimize"),
    "workers": ("run_worker", "spawn_workers"),
    "report": ("best_params", "trials_frame", "write_outputs", "write_plots"),
    "apply": ("apply_best", "trusted_overrides"),
    "run": ("run_tune",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
