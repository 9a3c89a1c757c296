"""MLflow tracking: where runs go, what each run records, and the logged model.

Every run lives in one store anchored at the repository root (`config.repo_root()`,
which honours `DVC_ROOT`, so `dvc exp run --queue` copies log to the same place):

- `MLFLOW_TRACKING_URI` (environment) wins, then `mlflow.tracking_uri` in params.yaml
  (for a shared `mlflow server`), then `sqlite:///<root>/mlruns/mlflow.db` with
  artifacts under `<root>/mlruns/artifacts/`.

With a SQLite store MLflow would put a new experiment's artifacts under the *working
directory*; `configure` therefore creates the experiment with an explicit
`artifact_location` under `<root>/mlruns/artifacts/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric

from petscan import config, pyfunc_model
from petscan.io import read_json, write_json
from petscan.pyfunc_model import PetscanKerasModel  # noqa: F401  (predict checks the type)

STORE_DIR = "mlruns"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_KEY_LENGTH = 250
TRUNCATED = "...[truncated]"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
RANDOM_INIT_NOTE = (
    "**WARNING: RANDOM-INIT BACKBONE (NOT RadImageNet).** The frozen backbone of this run "
    "has random weights, not the RadImageNet weights; its numbers demonstrate the pipeline "
    "only and are NOT a RadImageNet result."
)


# --------------------------------------------------------------------------- store


def store_paths(root: Path | None = None) -> tuple[Path, Path]:
    """(SQLite database, artifact folder) of the default store under `<root>/mlruns`."""
    base = (root or config.repo_root()) / STORE_DIR
    return base / DB_NAME, base / ARTIFACTS_DIR


def resolve_tracking_uri(mlflow_params: dict[str, Any] | None = None) -> str:
    """`MLFLOW_TRACKING_URI` > params `tracking_uri` > SQLite under `<repo root>/mlruns`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    param = (mlflow_params or {}).get("tracking_uri")
    if param:
        return str(param)
    db, _ = store_paths()
    return f"sqlite:///{db}"


def use_store(mlflow_params: dict[str, Any] | None = None) -> str:
    """Point MLflow (tracking and registry) at the project's store; return the URI."""
    uri = resolve_tracking_uri(mlflow_params)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_artifact_location(name: str, root: Path | None = None) -> str:
    """`file://<root>/mlruns/artifacts/<experiment name as a folder name>`."""
    _, artifacts = store_paths(root)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"
    return (artifacts / slug).as_uri()


def configure(mlflow_params: dict[str, Any]) -> str:
    """Set the tracking URI, make sure the experiment exists, select it; return its id.

    A local SQLite store (a `sqlite:` URI) gets an explicit artifact location under
    `<root>/mlruns/artifacts/`; a tracking server decides its own (e.g. served artifacts).
    """
    uri = use_store(mlflow_params)
    name = mlflow_params.get("experiment") or "pet-classification"
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = experiment_artifact_location(name) if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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
    """(`git rev-parse HEAD` or "unknown", dirty flag "true"/"false"/"unknown")."""
    root = root or config.repo_root()
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return "unknown", "unknown"
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else ("true" if status else "false")
    return commit, dirty


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


def run_tags(manifests: Sequence[str | Path], weights_meta: dict[str, Any]) -> dict[str, str]:
    """Tags that make a run reproducible: code, data, experiment and backbone weights."""
    commit, dirty = git_state()
    random_init = bool(weights_meta.get("random_init", False))
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        "data_manifest_sha256": manifest_hash(manifests),
        "weights_source": str(weights_meta.get("source", "unknown")),
        "weights_sha256": str(weights_meta.get("sha256", "unknown")),
        "random_init": "true" if random_init else "false",
        "backbone": str(weights_meta.get("backbone", "unknown")),
        "backbone_label": str(weights_meta.get("label", "unknown")),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


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


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """`{"train": {"loss": {"gamma": 2.0}}}` -> `{"train.loss.gamma": "2.0"}`."""
    return {key[:MAX_KEY_LENGTH]: param_value(v) for key, v in config.flatten(params).items()}


def run_description(tags: dict[str, str]) -> str:
    lines = []
    if tags.get("random_init") == "true":
        lines.append(RANDOM_INIT_NOTE)
    label = tags.get("backbone_label")
    if label:
        lines.append(f"Backbone weights: {label} (source: {tags.get('weights_source', '?')}).")
    return "\n\n".join(lines)


@contextlib.contextmanager
def start_training_run(
    mlflow_params: dict[str, Any],
    params: dict[str, Any],
    tags: dict[str, str],
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per training: params (flattened, dotted names), tags, description.

    The run description (`mlflow.note.content`) warns loudly when the backbone is
    random-init. The full parameter set is also stored as the `params.json` artifact.
    """
    experiment_id = configure(mlflow_params)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags=dict(tags),
        description=run_description(tags) or None,
    ) as run:
        mlflow.log_params(flat_params(params))
        mlflow.log_dict(params, "params.json")
        yield run


@contextlib.contextmanager
def resumed_run(
    run_id: str | None, mlflow_params: dict[str, Any] | None = None
) -> Iterator[mlflow.ActiveRun | None]:
    """Reopen a finished run so evaluate/plot log into it; `None` run id: yield None."""
    if not run_id:
        yield None
        return
    use_store(mlflow_params)
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
        yield mlflow.active_run()
        return
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def write_run_id(path: str | Path, run_id: str, experiment_id: str | None = None) -> None:
    """Record the training run for the later stages (`{"run_id": ..., "tracking_uri": ...}`)."""
    write_json(
        path,
        {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "tracking_uri": mlflow.get_tracking_uri(),
        },
    )


def read_run_id(path: str | Path) -> str | None:
    """The run id written by `write_run_id`; None when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    return read_json(path).get("run_id") or None


# --------------------------------------------------------------------------- epoch metrics


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log loss, accuracy, val_loss, val_accuracy and learning_rate once per epoch.

    One `log_batch` call per epoch, `step` = the 0-based epoch. The learning rate is
    read from the optimizer at the first batch of the epoch, i.e. the rate the epoch
    actually used, whatever order the scheduler callbacks run in.
    """

    def __init__(
        self,
        run_id: str | None = None,
        keys: Sequence[str] = EPOCH_METRICS,
        prefix: str = "",
    ):
        super().__init__()
        self.run_id = run_id
        self.keys = tuple(keys)
        self.prefix = prefix
        self._epoch_lr: float | None = None
        self._client: mlflow.MlflowClient | None = None

    def _current_lr(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))

    def on_train_begin(self, logs=None):
        if self.run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise RuntimeError(
                    "MlflowEpochLogger needs an active MLflow run (tracking.start_training_run) "
                    "or an explicit run_id"
                )
            self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_lr = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch_lr is None:
            self._epoch_lr = self._current_lr()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = {k: float(logs[k]) for k in self.keys if k in logs}
        lr = self._epoch_lr if self._epoch_lr is not None else self._current_lr()
        if lr is not None:
            values["learning_rate"] = lr
        timestamp = int(pd.Timestamp.now().timestamp() * 1000)
        metrics = [Metric(f"{self.prefix}{k}", v, timestamp, int(epoch)) for k, v in values.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)


# --------------------------------------------------------------------------- the model


def pip_requirements() -> list[str]:
    """The installed versions of what the pyfunc needs (plus the petscan package itself)."""
    names = ["mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "pillow"]
    pins = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name)}")
    return pins


def log_keras_model(
    model_path: str | Path,
    mlflow_params: dict[str, Any],
    class_names: Sequence[str],
    model_params: dict[str, Any],
    input_example: Any = None,
    name: str = "model",
    max_pixels: int | None = None,
):
    """Log a `.keras` classifier as a pyfunc into the active run and register it.

    Logged as MLflow "models from code" (`petscan/pyfunc_code.py`, see `petscan.pyfunc_model`)
    with the Keras file as the artifact `keras_model` (`artifacts/model.keras`).
    `input_example`: image paths (or a DataFrame with `path`/`image` columns) that exist
    now; MLflow predicts on them to check the model. `max_pixels` (`split.max_pixels`):
    larger images are answered with an error. Registered under
    `mlflow_params["registered_model"]` unless that is empty. Returns the ModelInfo.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path} not found: train the model first (`dvc repro train`)"
        )
    model_config = {
        "class_names": list(class_names),
        "input_size": [int(v) for v in model_params["input_size"]],
        "resize": model_params.get("resize", "stretch"),
        "backbone": model_params.get("backbone"),
        "preprocessing": model_params.get("preprocessing"),
        "max_pixels": None if max_pixels is None else int(max_pixels),
    }
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(pyfunc_model.CODE_FILE),
        artifacts={pyfunc_model.KERAS_ARTIFACT: str(model_path)},
        model_config=model_config,
        signature=pyfunc_model.model_signature(class_names),
        input_example=pyfunc_model.example_frame(input_example),
        pip_requirements=pip_requirements(),
        metadata={"petscan": "requires the petscan package (pip install -e <repo>)"},
        registered_model_name=mlflow_params.get("registered_model") or None,
    )
