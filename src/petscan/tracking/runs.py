"""Opening MLflow runs and logging params: the training run and the stages after it.

A training run (`start_training_run`) carries the tags that make it reproducible
(`provenance.run_tags`: code, data, backbone weights), its params (flattened, dotted names,
credentials redacted) and a description warning about a random-init backbone.
The stages that read the trained model (evaluate, explain, plot) log into that same run
(`training_run`): it is found by the model's sha256, reopened, and given the stage's params.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import mlflow

from petscan.handoff.records import banner
from petscan.params.loading import flatten
from petscan.tracking import run_owner
from petscan.tracking.store import configure, use_store
from petscan.utils.redact import redact_values

if TYPE_CHECKING:
    from petscan.params.results import MlflowParams

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_KEY_LENGTH = 250
TRUNCATED = "...[truncated]"


def backbone_note(tags: dict[str, str]) -> str | None:
    """The Markdown warning on a run or model version whose backbone is not RadImageNet's
    (random-init, the demo's synthetic-PET backbone, ImageNet), or None."""
    text = banner(tags)
    if text is None:
        return None
    if tags.get("random_init") in (True, "true"):
        what = "has random weights; its numbers demonstrate the pipeline only"
    else:
        what = f"is the {text}"
    return (
        f"**WARNING: {text.upper()}.** The frozen backbone of this run {what}: "
        "NOT a RadImageNet result."
    )


def param_value(value: Any) -> str:
    """A param value as readable text (lists as JSON), cut to MLflow's 6000 characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - len(TRUNCATED)] + TRUNCATED
    return text


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """`{"train": {"loss": {"gamma": 2.0}}}` -> `{"train.loss.gamma": "2.0"}`; URLs (a
    tracking URI, a weights source) lose their credentials and query (`redact`)."""
    flat = flatten(redact_values(params))
    return {key[:MAX_KEY_LENGTH]: param_value(v) for key, v in flat.items()}


def run_description(tags: dict[str, str]) -> str:
    lines = [note] if (note := backbone_note(tags)) else []
    label = tags.get("weights_label")
    if label:
        lines.append(f"Backbone weights: {label} (source: {tags.get('weights_source', '?')}).")
    return "\n\n".join(lines)


@contextlib.contextmanager
def start_training_run(
    mlflow_params: MlflowParams,
    params: Mapping[str, Any],
    tags: dict[str, str],
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per training: params (flattened, dotted names), tags, description.

    `params` is the stage's params nested as in params.yaml (`StageParams.as_dict()`).
    The run description (`mlflow.note.content`) warns loudly when the backbone is
    random-init. The full parameter set is also stored as the `params.json` artifact;
    URLs in either are redacted (`redact.redact_values`). The run records the process that
    owns it (`run_owner`); runs of this experiment left RUNNING by a process that is gone
    (killed) are first marked KILLED, in one line.
    """
    experiment_id = configure(mlflow_params)
    run_owner.close_interrupted(experiment_id, "train")
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags={**tags, **run_owner.owner_tags()},
        description=run_description(tags) or None,
    ) as run:
        mlflow.log_params(flat_params(params))
        mlflow.log_dict(redact_values(params), "params.json")
        yield run


@contextlib.contextmanager
def resumed_run(
    run_id: str | None, mlflow_params: MlflowParams | None = None
) -> Iterator[mlflow.ActiveRun | None]:
    """Reopen a finished run so a later stage logs into it; `None` run id: yield None."""
    if not run_id:
        yield None
        return
    use_store(mlflow_params)
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
        yield mlflow.active_run()
        return
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tags(run_owner.owner_tags())  # RUNNING again: this process owns it now
        yield run


def log_stage_params(run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Log the params a later stage (evaluate, explain, plot) reads into the training run.

    MLflow params cannot change: an experiment that changes only `evaluate.*` reuses the
    training run, so a value that differs from the logged one goes into a tag of the same
    name instead (the latest value; the metrics are the latest too). Returns those tags.
    """
    client = mlflow.MlflowClient()
    logged = client.get_run(run_id).data.params
    changed = {}
    for key, value in flat_params(params).items():
        if key not in logged:
            client.log_param(run_id, key, value)
        elif logged[key] != value:
            client.set_tag(run_id, key, value)
            changed[key] = value
    return changed


def training_run_id(model_sha256: str | None, mlflow_params: MlflowParams) -> str | None:
    """The newest training run whose model has this sha256 (tag `model_sha256`), or None.

    `evaluate`, `explain` and `plot` log into the run that trained the model they read. The run id
    is not kept in a DVC output (it differs on every run, so identical trainings would
    not give identical files); the model is byte-reproducible, so its sha256, recorded
    in train.json, finds the run, also in `dvc exp run --queue` copies.
    """
    if not model_sha256:
        return None
    experiment_id = configure(mlflow_params)
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.model_sha256 = '{model_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        warnings.warn(
            f"no MLflow training run in {mlflow.get_tracking_uri()} has model_sha256 "
            f"{model_sha256[:12]}...: nothing is logged to MLflow (`dvc repro -f train` retrains "
            "and logs a run)",
            stacklevel=2,
        )
        return None
    return runs[0].info.run_id


@contextlib.contextmanager
def training_run(
    model_sha256: str | None, mlflow_params: MlflowParams, stage_params: Mapping[str, Any]
) -> Iterator[mlflow.ActiveRun | None]:
    """Log into the run that trained the model: the one way evaluate, explain and plot do.

    Finds the run by the model's sha256 (`training_run_id`), reopens it and logs
    `stage_params` (the stage's params, nested as in params.yaml; `log_stage_params`).
    Yields the active run, or None when no run trained this model (nothing is logged).
    """
    run_id = training_run_id(model_sha256, mlflow_params)
    with resumed_run(run_id, mlflow_params) as run:
        if run is not None:
            log_stage_params(run.info.run_id, stage_params)
        yield run
