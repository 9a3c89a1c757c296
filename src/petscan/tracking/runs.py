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
import warnings
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from petscan.data.images import ImageRules
from petscan.handoff.manifests import manifest_paths
from petscan.handoff.records import EPOCH_METRICS, WEIGHTS_FIELDS, WeightsInfo, banner
from petscan.params import loading as config
from petscan.serving import pyfunc as pyfunc_model
from petscan.tracking import run_owner
from petscan.utils.redact import redact_text, redact_values, refuse_cleartext_credentials

STORE_DIR = "mlruns"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
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
    refuse_cleartext_credentials(uri, "the MLflow tracking URI")
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
    name = mlflow_params["experiment"]
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
    """(`git rev-parse HEAD` or "unknown", dirty flag "true"/"false"/"unknown").

    Dirty means a tracked file differs from the commit, except `dvc.lock`: DVC rewrites
    it while the pipeline runs (it records outputs, not code or params)."""
    root = root or config.repo_root()
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


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """`{"train": {"loss": {"gamma": 2.0}}}` -> `{"train.loss.gamma": "2.0"}`; URLs (a
    tracking URI, a weights source) lose their credentials and query (`redact`)."""
    flat = config.flatten(redact_values(params))
    return {key[:MAX_KEY_LENGTH]: param_value(v) for key, v in flat.items()}


def run_description(tags: dict[str, str]) -> str:
    lines = [note] if (note := backbone_note(tags)) else []
    label = tags.get("weights_label")
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
        mlflow.set_tags(run_owner.owner_tags())  # RUNNING again: this process owns it now
        yield run


def log_stage_params(run_id: str, params: dict[str, Any]) -> dict[str, str]:
    """Log the params a later stage (evaluate, plot) reads into the training run.

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


def training_run_id(model_sha256: str | None, mlflow_params: dict[str, Any]) -> str | None:
    """The newest training run whose model has this sha256 (tag `model_sha256`), or None.

    `evaluate` and `plot` log into the run that trained the model they read. The run id
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
    min_side: int | None = None,
    max_aspect: float | None = None,
):
    """Log a `.keras` classifier as a pyfunc into the active run and register it.

    Logged as MLflow "models from code" (`petscan/pyfunc_code.py`, see `petscan.serving.pyfunc`)
    with the Keras file as the artifact `keras_model` (`artifacts/model.keras`).
    `input_example`: image paths (or a DataFrame with `path`/`image` columns) that exist
    now; MLflow predicts on them to check the model. `max_pixels`, `min_side`,
    `max_aspect` (`split`'s image rules; None: `max_pixels` no limit, the others their
    default): an image that split would refuse is answered with an error. Registered under
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
        "resize": model_params["resize"],
        "backbone": model_params["backbone"],
        "preprocessing": model_params["preprocessing"],
        "max_pixels": None if max_pixels is None else int(max_pixels),
        **_shape_rules(min_side, max_aspect),
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
        registered_model_name=mlflow_params["registered_model"] or None,
    )


def _shape_rules(min_side: int | None, max_aspect: float | None) -> dict[str, Any]:
    """`min_side` and `max_aspect` for the model config (the schema's default for None)."""
    rules = ImageRules.from_params(
        {k: v for k, v in (("min_side", min_side), ("max_aspect", max_aspect)) if v is not None}
    )
    return {"min_side": int(rules.min_side), "max_aspect": float(rules.max_aspect)}


# --------------------------------------------------------------------------- the registry

# run tags copied onto each registered version (the registry pages show them)
VERSION_TAGS = (
    *WEIGHTS_FIELDS,
    "data_manifest_sha256",
    "git_commit",
    "dvc_exp_name",
    "model_sha256",
)
# (name in the metrics, label) of the test metrics in a version's description and tags
HEADLINE_METRICS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_macro", "macro F1"),
    ("roc_auc_macro", "macro ROC AUC"),
    ("ece", "ECE"),
)


def _with_interval(values: dict[str, Any], name: str) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, int | float) and np.isfinite(value) else "n/a"

    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    return f"{fmt(values.get(name))} [{fmt(low)}, {fmt(high)}]"


def version_description(tags: dict[str, str], results: dict[str, Any] | None = None) -> str:
    """A registered version's description (Markdown): the random-init warning, backbone and
    weights, data hash, code, and the test metrics with their 95% intervals once evaluated."""
    lines = [note, ""] if (note := backbone_note(tags)) else []
    dirty = " (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""
    lines += [
        f"- Backbone: {tags.get('backbone', '?')}, weights: {tags.get('weights_label', '?')} "
        f"(source: {tags.get('weights_source', '?')}, sha256 {tags.get('weights_sha256', '?')})",
        f"- Data: split manifests sha256 {tags.get('data_manifest_sha256', '?')} "
        "(train.csv + val.csv + test.csv)",
        f"- Code: git commit {tags.get('git_commit', '?')}{dirty}; "
        f"DVC experiment {tags.get('dvc_exp_name', '?')}",
    ]
    test = (results or {}).get("test")
    if isinstance(test, dict):
        where = f"{test.get('n', '?')} images"
        if "n_groups" in test:
            where += f" of {test['n_groups']} patients"
        metrics = ", ".join(f"{label} {_with_interval(test, k)}" for k, label in HEADLINE_METRICS)
        lines.append(f"- Test ({where}; 95% bootstrap intervals): {metrics}")
    else:
        lines.append("- Test metrics: not evaluated yet (the evaluate stage adds them)")
    return "\n".join(lines)


def register_version(
    model_info: Any, mlflow_params: dict[str, Any], tags: dict[str, str]
) -> str | None:
    """Describe and tag the version `log_keras_model` registered; move `mlflow.alias` to it.

    Returns the version number, or None when nothing was registered.
    """
    name = mlflow_params.get("registered_model")
    version = getattr(model_info, "registered_model_version", None)
    if not name or version is None:
        return None
    client = mlflow.MlflowClient()
    client.update_model_version(name, str(version), description=version_description(tags))
    for key in VERSION_TAGS:
        if key in tags:
            client.set_model_version_tag(name, str(version), key, tags[key])
    alias = mlflow_params.get("alias")
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return str(version)


def describe_model_version(
    run_id: str, mlflow_params: dict[str, Any], results: dict[str, Any]
) -> list[str]:
    """After evaluation: the test metrics into the description and tags of the versions
    registered from `run_id` (`test_accuracy` = "0.349 [0.185, 0.522]", ...)."""
    name = mlflow_params.get("registered_model")
    if not name:
        return []
    client = mlflow.MlflowClient()
    tags = dict(client.get_run(run_id).data.tags)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    test = results.get("test") if isinstance(results.get("test"), dict) else {}
    for version in versions:
        client.update_model_version(
            name, version.version, description=version_description(tags, results)
        )
        for key, _ in HEADLINE_METRICS:
            if key in test:
                client.set_model_version_tag(
                    name, version.version, f"test_{key}", _with_interval(test, key)
                )
    return [str(v.version) for v in versions]
