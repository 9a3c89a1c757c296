"""`run_tune`: the whole of `make tune`, from the feature cache to the outputs.

A trial samples the space, writes the values into copies of the `train` and `model`
sections and trains the head with `training.fit_cached` (the `train` stage's own
recipe, early stopping included); see `objective`. MLflow gets one parent run per study
and one nested child run per trial; the outputs go to `tune/` (see `report`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from petscan.params import loading as config
from petscan.tuning.apply import apply_best, trusted_overrides
from petscan.tuning.data import TuneData, load_tune_data
from petscan.tuning.objective import Objective
from petscan.tuning.report import banner_text, write_outputs
from petscan.tuning.settings import TuneSettings
from petscan.tuning.storage import count_done, resolve_storage, storage_label
from petscan.tuning.study import (
    FailureGuard,
    Progress,
    max_steps,
    optimize,
    record_backbone,
    resume_study,
)
from petscan.tuning.study_runs import Tracker, close_stale_children, parent_run, study_tags
from petscan.tuning.workers import spawn_workers, worker_spec
from petscan.utils.errors import BadInputError


def open_tracker(
    mlflow_params: Mapping[str, Any],
    settings: TuneSettings,
    storage_url: str,
    data: TuneData,
    study: optuna.Study,
    root: Path | None = None,
) -> Tracker:
    """The study's parent run (found or created) with its stale child runs closed."""
    tags = study_tags(data)
    experiment_id, parent_id = parent_run(
        mlflow_params, settings, storage_url, tags, data.split_dir, root
    )
    tracker = Tracker(experiment_id, parent_id, settings.study_name, tags)
    close_stale_children(tracker.client, experiment_id, parent_id, study)
    return tracker


def run_tune(
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
    data = load_tune_data(root, params)
    objective = Objective(params, data, settings)  # checks the space before anything is stored
    url = resolve_storage(settings, root, workers)
    study = resume_study(settings, url, max_steps(params, settings), data.fingerprint)
    record_backbone(study, data.weights)
    tracker = open_tracker(params["mlflow"], settings, url, data, study, root)
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
            spec = worker_spec(
                params, root, settings, url, tracker.experiment_id, tracker.parent_run_id
            )
            spawn_workers(spec, workers, lambda: bar.refresh(study))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.refresh(study)
        bar.close()
        extra = {
            "storage": storage_label(url),
            "mlflow_parent_run_id": tracker.parent_run_id,
            "seconds_this_run": round(time.time() - started, 1),
            **(data.weights.to_dict() if data.weights else {}),
        }
        best, refused = _best_overrides(study, objective)
        if refused:
            extra["best_params_refused"] = refused
        outputs = write_outputs(
            study, settings, root, banner_text(data.weights), extra, plots, best_overrides=best
        )
        tracker.finish_study(outputs["summary"], outputs["files"], count_done(study), status)
        result = outputs["summary"]
    _raise_if_tripped(guard, study, settings)
    if apply:
        if refused:
            raise BadInputError(refused)
        if "best_params" not in result:
            raise BadInputError("no complete trial yet: nothing to apply; run more trials first")
        changed = apply_best(result["best_params"], params_path or config.PARAMS_FILE, set(best))
        result["applied"] = {k: list(v) for k, v in changed.items()}
    return result


def _best_overrides(study: optuna.Study, objective: Objective) -> tuple[dict | None, str | None]:
    """(the best trial's values rebuilt through tune.space, None) or (None, why not)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, None
    try:
        return trusted_overrides(study.best_trial, objective.dims, objective.num_classes), None
    except ValueError as err:
        return None, str(err)


def _raise_if_tripped(
    guard: FailureGuard | None, study: optuna.Study, settings: TuneSettings
) -> None:
    """RuntimeError naming the last error when `tune.max_failures` stopped the study."""
    if guard is None or not guard.tripped:
        return
    last = [t for t in study.trials if t.state == TrialState.FAIL][-1].user_attrs.get("error")
    raise RuntimeError(
        f"{settings.max_failures} trials failed in a row (last: {last}); "
        "see tune/trials.csv and the MLflow child runs"
    )
