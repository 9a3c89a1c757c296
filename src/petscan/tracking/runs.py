"""What an MLflow run records, and opening one: the training run and the stages after it.

A training run (`start_training_run`) carries tags that make it reproducible (`run_tags`:
code, data, backbone weights), its params (flattened, dotted names, credentials redacted),
the split manifests as datasets and a description warning about a random-init backbone.
The stages that read the trained model (evaluate, explain, plot) log into that same run
(`training_run`): it is found by the model's sha256, reopened, and given the stage's params.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from petscan.handoff.manifests import manifest_paths
from petscan.handoff.records import WeightsInfo, banner
from petscan.params.loading import flatten, repo_root
from petscan.tracking import run_owner
from petscan.tracking.store import configure, use_store
from petscan.utils.redact import redact_text, redact_values

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


# --------------------------------------------------------------------------- run metadata


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def git_state(root: Path | None = None) -> tuple[str, str]:
    """(`git rev-parse HEAD` or "unknown", dirty flag "true"/"false"/"unknown").

    Dirty means a tracked file differs from the commit, except `dvc.lock`: DVC rewrites
    it while the pipeline runs (it records outputs, not code or params)."""
    root = root or repo_root()
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return "unknown", "unknown"
    status = _git(
        root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock"
    )
    dirty = "unknown" if status is None else ("true" if status else "false")
    return commit, dirty


DATASET_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
DATASET_DIGEST_CHARS = 32  # MLflow stores a dataset digest in at most 36 characters


def manifest_hash(manifests: Sequence[str | Path]) -> str:
    """sha256 over the bytes of the split manifests, in the order given."""
    digest = hashlib.sha256()
    for path in manifests:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"split manifest {path} not found: run the split stage first (`dvc repro split`)"
            )
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_hash(split_dir: str | Path) -> str:
    """The data a run saw (tag `data_manifest_sha256`, the same for training and tuning runs):
    sha256 over the bytes of train.csv, val.csv and test.csv of `split_dir`, in that order.
    The manifests list every image's path, class, patient and sha256."""
    return manifest_hash(list(manifest_paths(split_dir).values()))


def run_tags(split_dir: str | Path, weights: WeightsInfo | None) -> dict[str, str]:
    """Tags that make a run reproducible: code, data, experiment and backbone weights (the
    `WeightsInfo` fields under their own names; `random_init` is "true" or "false")."""
    commit, dirty = git_state()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        "data_manifest_sha256": data_hash(split_dir),
    }
    if weights is not None:
        tags.update({key: str(value) for key, value in weights.to_dict().items()})
        tags["weights_source"] = redact_text(weights.weights_source)
        tags["random_init"] = "true" if weights.random_init else "false"
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_name(prefix: str, tags: dict[str, str]) -> str:
    """The DVC experiment's name when DVC runs one (`DVC_EXP_NAME`), else `<prefix>-<commit>`
    (`train-4ae41df`, `-dirty` appended for uncommitted changes): never MLflow's random words."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return exp_name
    commit = tags.get("git_commit", "unknown")
    name = f"{prefix}-{commit[:7] if commit != 'unknown' else 'nogit'}"
    return f"{name}-dirty" if tags.get("git_dirty") == "true" else name


def manifest_datasets(split_dir: str | Path, root: str | Path | None = None) -> list[Any]:
    """The split manifests as MLflow dataset inputs: name `<split>`, source the manifest's
    path (relative to `root`), digest the first 32 hex digits of the manifest's sha256,
    context train / validation / test."""
    inputs = []
    for split, path in manifest_paths(split_dir).items():
        frame = pd.read_csv(path, dtype={"patient": str})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:DATASET_DIGEST_CHARS]
        source = path.relative_to(root) if root and path.is_relative_to(root) else path
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways"
            warnings.simplefilter("ignore", UserWarning)
            entity = mlflow.data.from_pandas(
                frame, source=str(source), name=split, digest=digest, targets="label"
            )._to_mlflow_entity()  # (and "integer columns cannot represent missing values")
        context = InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[split])
        inputs.append(DatasetInput(entity, tags=[context]))
    return inputs


def log_datasets(run_id: str, split_dir: str | Path, root: str | Path | None = None) -> None:
    """Log train.csv, val.csv and test.csv as the run's datasets (MLflow's Dataset column)."""
    mlflow.MlflowClient().log_inputs(run_id, datasets=manifest_datasets(split_dir, root))


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
