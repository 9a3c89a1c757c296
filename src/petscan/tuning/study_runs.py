"""MLflow for a study: one parent run per study, one nested child run per trial.

The client API is used throughout (no active run), so several threads or worker
processes can log into the same parent at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
from mlflow.entities import Metric, Param
from optuna.trial import TrialState

from petscan.tracking import provenance, runs, store
from petscan.tuning.data import TuneData
from petscan.tuning.storage import storage_label

if TYPE_CHECKING:
    from petscan.params.learning import TuneParams
    from petscan.params.results import MlflowParams

TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_STATE = "optuna.trial_state"
TAG_STORAGE = "optuna.storage"
TAG_KIND = "petscan.run_kind"
TAG_PARENT = "mlflow.parentRunId"
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}
PARAMS_PER_BATCH = 100  # MLflow's limits on one log_batch call
METRICS_PER_BATCH = 1000


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_batch(
    client: mlflow.MlflowClient,
    run_id: str,
    params: Mapping[str, str] | None = None,
    metrics: Sequence[Metric] = (),
) -> None:
    """Params and metrics in as few calls as MLflow's batch limits allow."""
    params_list = [Param(k, v) for k, v in (params or {}).items()]
    for i in range(0, len(params_list), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params_list[i : i + PARAMS_PER_BATCH])
    metrics = list(metrics)
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])


def study_tags(data: TuneData) -> dict[str, str]:
    """`tracking.provenance.run_tags` for the study: code, data manifests, backbone weights
    (the same `data_manifest_sha256` as the training runs on the same split)."""
    return provenance.run_tags(data.split_dir, data.weights)


class Tracker:
    """Creates and closes the child run of each trial under the study's parent run."""

    def __init__(
        self, experiment_id: str, parent_run_id: str, study_name: str, tags: dict[str, str]
    ):
        self.client = mlflow.MlflowClient()
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.tags = dict(tags)

    def start_trial(
        self, trial: optuna.Trial, values: Mapping[str, Any], overrides: Mapping[str, Any]
    ) -> str:
        """A RUNNING child run with the sampled values (and the overrides they make)."""
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
        params = {k: runs.param_value(v) for k, v in {**overrides, **values}.items()}
        log_batch(self.client, run.info.run_id, params=params)
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
        """Log the epoch rows, final metrics and objective; close the run with its state."""
        now = _now_ms()
        entries = [
            Metric(k, float(v), now, int(row["epoch"]))
            for row in rows
            for k, v in row.items()
            if k != "epoch" and _finite(v)
        ]
        entries += [Metric(k, float(v), now, 0) for k, v in final.items() if _finite(v)]
        if _finite(value):
            entries.append(Metric("objective", float(value), now, 0))
        log_batch(self.client, run_id, metrics=entries)
        self.client.set_tag(run_id, TAG_STATE, state)
        self.client.set_terminated(run_id, status=RUN_STATUS.get(state, "KILLED"))
        if state == "complete" and _finite(value):
            self.client.log_metric(
                self.parent_run_id, "trial_objective", float(value), now, trial_number
            )

    def finish_study(
        self, summary: Mapping[str, Any], files: Mapping[str, Any], step: int, status: str
    ) -> None:
        """Log the study's counts, best value and output files to the parent; close it."""
        run_id, now = self.parent_run_id, _now_ms()
        counts = {f"n_{k}": v for k, v in summary["trials"].items()}
        for key, value in {"best_value": summary.get("best_value"), **counts}.items():
            if _finite(value):
                self.client.log_metric(run_id, key, float(value), now, step)
        for key in ("best_params", "trials", "summary"):
            if key in files:
                self.client.log_artifact(run_id, str(files[key]))
        for path in files["plots"]:
            self.client.log_artifact(run_id, str(Path(path)), "plots")
        self.client.set_terminated(run_id, status=status)


def described(tune: TuneParams) -> dict[str, Any]:
    """The `tune` section as the parent run logs it: its direction after the objective, no
    space (logged as `tune_space.json`) and no storage (logged redacted)."""
    values = tune.model_dump(exclude={"space", "storage"})
    keys = list(values)
    keys.insert(keys.index("objective") + 1, "direction")
    return {k: tune.direction if k == "direction" else values[k] for k in keys}


def parent_run(
    mlflow_params: MlflowParams,
    tune: TuneParams,
    storage_url: str,
    tags: Mapping[str, str],
    split_dir: str | Path | None = None,
    root: str | Path | None = None,
) -> tuple[str, str]:
    """(experiment id, parent run id): the study's run, found by tags or created; RUNNING."""
    experiment_id = store.configure(mlflow_params)
    client = mlflow.MlflowClient()
    label = storage_label(storage_url)
    quoteless = label.replace("'", "")  # a tag value the search filter can quote
    query = (
        f"tags.`{TAG_STUDY}` = '{tune.study_name}' and tags.`{TAG_KIND}` = 'tune_study' "
        f"and tags.`{TAG_STORAGE}` = '{quoteless}'"
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
        TAG_STUDY: tune.study_name,
        TAG_STORAGE: quoteless,
        TAG_KIND: "tune_study",
    }
    note = runs.run_description(dict(tags))
    if note:
        run_tags["mlflow.note.content"] = note
    run = client.create_run(experiment_id, tags=run_tags, run_name=f"study-{tune.study_name}")
    params = {**runs.flat_params({"tune": described(tune)}), "tune.storage": label}
    log_batch(client, run.info.run_id, params=params)
    client.log_dict(run.info.run_id, tune.space, "tune_space.json")
    if split_dir is not None:  # the study's data as MLflow datasets (train, validation, test)
        provenance.log_datasets(run.info.run_id, split_dir, root)
    return experiment_id, run.info.run_id


def close_stale_children(
    client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, study: optuna.Study
) -> None:
    """Children still RUNNING whose trial is no longer running (a killed process): KILLED."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in children:
        if int(run.data.tags.get(TAG_TRIAL, -1)) not in running:
            client.set_tag(run.info.run_id, TAG_STATE, "killed")
            client.set_terminated(run.info.run_id, status="KILLED")


def close_lost_trial_run(trial: optuna.trial.FrozenTrial) -> None:
    """The child run of a trial failed by the heartbeat check (its worker was lost): KILLED,
    tagged `lost`. Best effort: the retry goes on whatever the server answers."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    client = mlflow.MlflowClient()
    with contextlib.suppress(Exception):
        client.set_tag(run_id, TAG_STATE, "lost")
        client.set_terminated(run_id, status="KILLED")
