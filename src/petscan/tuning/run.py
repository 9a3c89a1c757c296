"""`run_tune`: the whole of `make tune`, from the feature cache to the outputs.

A trial samples the space, writes the values into the `train` and `model` sections
(validated again by the schema) and trains the head with `training.fit.fit_cached` (the
`train` stage's own recipe, early stopping included); see `objective`. MLflow gets one
parent run per study and one nested child run per trial; the outputs go to `tune/` (see
`report`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from petscan.params.loading import PARAMS_FILE, repo_root
from petscan.params.schema import Params
from petscan.params.space import check_space
from petscan.tuning.apply import apply_best, trusted_overrides
from petscan.tuning.command import with_command_line
from petscan.tuning.data import TuneData, load_tune_data
from petscan.tuning.objective import Objective
from petscan.tuning.report import banner_text, write_outputs
from petscan.tuning.storage import count_done, resolve_storage, storage_label
from petscan.tuning.study import (
    FailureGuard,
    Progress,
    max_steps,
    optimize,
    record_backbone,
    resume_study,
)
from petscan.tuning.study_runs import (
    Tracker,
    close_lost_trial_run,
    close_stale_children,
    parent_run,
    study_tags,
)
from petscan.tuning.workers import spawn_workers, worker_spec
from petscan.utils.errors import BadInputError

if TYPE_CHECKING:
    from petscan.params.learning import TuneParams
    from petscan.params.results import MlflowParams


def open_tracker(
    mlflow_params: MlflowParams,
    tune: TuneParams,
    storage_url: str,
    data: TuneData,
    study: optuna.Study,
    root: Path | None = None,
) -> Tracker:
    """The study's parent run (found or created) with its stale child runs closed."""
    tags = study_tags(data)
    experiment_id, parent_id = parent_run(
        mlflow_params, tune, storage_url, tags, data.split_dir, root
    )
    tracker = Tracker(experiment_id, parent_id, tune.study_name, tags)
    close_stale_children(tracker.client, experiment_id, parent_id, study)
    return tracker


def study_params(params: Any, tune: TuneParams) -> Params:
    """The sections a trial reads (`train`, `model`, `data`) and `tune` as one `Params`,
    which `params.schema.with_overrides` validates each trial's values against."""
    return Params(tune=tune, train=params.train, model=params.model, data=params.data)


def run_tune(
    params: Any,
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

    `params` has the sections tune, train, model, data, mlflow plus `split.out_dir` and
    `featurize.out_dir` (the tune command's `StageParams`, or a whole `Params`); `trials`,
    `storage`, `study_name` and `timeout_s` replace the `tune` values they name (checked by
    the schema). `tune.space` is checked before anything is stored. Returns the summary
    written to `tune/summary.json`. A Ctrl-C keeps every finished trial; the outputs are
    written and KeyboardInterrupt re-raised.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(root) if root is not None else repo_root()
    tune = with_command_line(
        params.tune, n_trials=trials, storage=storage, study_name=study_name, timeout_s=timeout_s
    )
    workers = max(1, workers)
    study_values = study_params(params, tune)
    dims = check_space(study_values, params_path or PARAMS_FILE)
    data = load_tune_data(root, params)
    objective = Objective(study_values, data, dims)
    url = resolve_storage(tune, root, workers)
    study = resume_study(
        tune, url, max_steps(params.train, tune), data.fingerprint, close_lost_trial_run
    )
    record_backbone(study, data.weights)
    tracker = open_tracker(params.mlflow, tune, url, data, study, root)
    target = tune.n_trials
    bar = Progress(target, count_done(study), tune.direction, tune.study_name, disable=not progress)
    started, status, guard = time.time(), "FINISHED", None
    try:
        if workers == 1:
            objective.tracker = tracker
            guard = optimize(study, objective, target, tune.timeout_s, [bar], tune.max_failures)
            status = "FAILED" if guard.tripped else status
        else:
            spec = worker_spec(
                params, tune, root, url, tracker.experiment_id, tracker.parent_run_id
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
            study, tune, root, banner_text(data.weights), extra, plots, best_overrides=best
        )
        tracker.finish_study(outputs["summary"], outputs["files"], count_done(study), status)
        result = outputs["summary"]
    _raise_if_tripped(guard, study, tune)
    if apply:
        if refused:
            raise BadInputError(refused)
        if "best_params" not in result:
            raise BadInputError("no complete trial yet: nothing to apply; run more trials first")
        changed = apply_best(result["best_params"], params_path or PARAMS_FILE, set(best))
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


def _raise_if_tripped(guard: FailureGuard | None, study: optuna.Study, tune: TuneParams) -> None:
    """RuntimeError naming the last error when `tune.max_failures` stopped the study."""
    if guard is None or not guard.tripped:
        return
    last = [t for t in study.trials if t.state == TrialState.FAIL][-1].user_attrs.get("error")
    raise RuntimeError(
        f"{tune.max_failures} trials failed in a row (last: {last}); "
        "see tune/trials.csv and the MLflow child runs"
    )
