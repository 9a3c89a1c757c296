"""A study's outputs under `tune/`: best_params.yaml, trials.csv, plots/*.png, summary.json."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from petscan.handoff.records import WeightsInfo
from petscan.params.space import nest
from petscan.utils import io

if TYPE_CHECKING:
    from petscan.params.learning import TuneParams

SIGNIFICANT_DIGITS = 4
PLOT_DPI = 110


def banner_text(weights: WeightsInfo | None) -> str | None:
    """The red line stamped on the plots when the backbone is random-init; else None."""
    text = weights.banner if weights else None
    return f"{text}: demo numbers only" if text else None


def _round(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def best_params(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's overrides (`apply.trusted_overrides`: rebuilt through the space,
    never read from the storage as they are) in the shape of params.yaml (floats to 4
    significant digits)."""
    return nest({k: _round(v) for k, v in overrides.items()})


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, epochs, params, MLflow run, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ended = t.datetime_complete and t.datetime_start
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if ended else math.nan
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else math.nan,
            "duration_s": round(duration, 3),
            "epochs_run": t.user_attrs.get("epochs_run"),
            "last_step": t.last_step,
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        }
        row.update({f"params_{k}": v for k, v in t.params.items()})
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def _skip_reason(name: str, complete: int, searched: bool) -> str | None:
    if not complete:
        return "no complete trial yet"
    if name == "param_importances" and (complete < 2 or not searched):
        return f"needs >= 2 complete trials (have {complete})"
    if name in ("parallel_coordinate", "slice") and not searched:
        return "no searched dimension"
    return None


def write_plots(
    study: optuna.Study, out_dir: Path, banner: str | None = None, target_name: str = "Objective"
) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib plots as PNGs; returns (files, notes about skipped plots)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = any(t.params for t in complete)
    plots: dict[str, Callable] = {
        "optimization_history": partial(ovm.plot_optimization_history, target_name=target_name),
        "intermediate_values": ovm.plot_intermediate_values,
        "param_importances": partial(ovm.plot_param_importances, target_name=target_name),
        "parallel_coordinate": partial(ovm.plot_parallel_coordinate, target_name=target_name),
        "slice": partial(ovm.plot_slice, target_name=target_name),
    }
    files, notes = [], []
    for name, plot in plots.items():
        reason = _skip_reason(name, len(complete), searched)
        if reason:
            notes.append(f"{name}: skipped, {reason}")
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
            # above the axes (the tight bounding box grows to hold it), clear of axis labels
            fig.text(
                0.5, 1.0, banner, ha="center", va="bottom", color="red", fontsize=9, weight="bold"
            )
        path = out_dir / "plots" / f"{name}.png"
        with io.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=PLOT_DPI, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    return files, notes


class _FlowListDumper(yaml.SafeDumper):
    """Block mappings, flow lists: `alpha: [0.5, 0.3, 0.2]` as params.yaml writes them."""


_FlowListDumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_FlowListDumper, sort_keys=False, default_flow_style=False)


def write_best_params(
    path: Path,
    study: optuna.Study,
    tune: TuneParams,
    overrides: Mapping[str, Any],
    banner: str | None = None,
) -> dict[str, Any]:
    """best_params.yaml: a commented params.yaml fragment (with the random-init warning
    when `banner`); returns the fragment."""
    best = study.best_trial
    fragment = best_params(overrides)
    where = "mean over cv folds" if tune.cv_folds >= 2 else "val"
    header = (
        f"# Best trial of Optuna study '{study.study_name}': trial {best.number}, "
        f"{tune.objective} ({where}) = {best.value:.6g}.\n"
        "# Merge into params.yaml with `make tune APPLY=1` (stages/tune.py --apply).\n"
    )
    if banner:
        header += f"# WARNING: {banner}\n"
    io.write_text(path, header + dump_yaml(fragment))
    return fragment


def write_outputs(
    study: optuna.Study,
    tune: TuneParams,
    root: Path,
    banner: str | None = None,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
    best_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """best_params.yaml, trials.csv, plots/*.png and summary.json under `<root>/<out_dir>`.

    `best_overrides`: the best trial's values as `apply.trusted_overrides` rebuilds them;
    None writes no best_params.yaml.

    Returns {"summary": what summary.json holds, "files": {name: path, "plots": [paths]}}.
    """
    out_dir = Path(root) / tune.out_dir
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "objective": tune.objective,
        "direction": tune.direction,
        "cv_folds": tune.cv_folds,
        "n_trials_target": tune.n_trials,
        "trials": states,
        **dict(extra or {}),
    }
    files: dict[str, Any] = {"trials": out_dir / "trials.csv"}
    io.write_csv(files["trials"], trials_frame(study))
    if states["complete"]:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number)
    if states["complete"] and best_overrides is not None:
        files["best_params"] = out_dir / "best_params.yaml"
        summary["best_params"] = write_best_params(
            files["best_params"], study, tune, best_overrides, banner
        )
    files["plots"], notes = (
        write_plots(study, out_dir, banner, tune.objective) if plots else ([], ["not drawn"])
    )
    summary["plot_notes"] = notes
    files["summary"] = out_dir / "summary.json"
    io.write_json(files["summary"], summary)
    return {"summary": summary, "files": files}
