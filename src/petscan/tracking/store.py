"""Where MLflow runs go: the tracking URI, the default store's paths, the experiment.

Every run lives in one store anchored at the repository root (`loading.repo_root()`,
which honours `DVC_ROOT`, so `dvc exp run --queue` copies log to the same place):

- `MLFLOW_TRACKING_URI` (environment) wins, then `mlflow.tracking_uri` in params.yaml
  (for a shared `mlflow server`), then `sqlite:///<root>/mlruns/mlflow.db` with
  artifacts under `<root>/mlruns/artifacts/`.

With a SQLite store MLflow would put a new experiment's artifacts under the *working
directory*; `configure` therefore creates the experiment with an explicit
`artifact_location` under `<root>/mlruns/artifacts/`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.utils.credentials import read_mlflow_creds

from petscan.params.loading import repo_root
from petscan.utils.errors import UserError
from petscan.utils.redact import redact_url, refuse_cleartext_credentials

if TYPE_CHECKING:
    from petscan.params.results import MlflowParams

STORE_DIR = "mlruns"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"


def store_paths(root: Path | None = None) -> tuple[Path, Path]:
    """(SQLite database, artifact folder) of the default store under `<root>/mlruns`."""
    base = (root or repo_root()) / STORE_DIR
    return base / DB_NAME, base / ARTIFACTS_DIR


def resolve_tracking_uri(mlflow_params: MlflowParams | None = None) -> str:
    """`MLFLOW_TRACKING_URI` > params `tracking_uri` > SQLite under `<repo root>/mlruns`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if mlflow_params is not None and mlflow_params.tracking_uri:
        return mlflow_params.tracking_uri
    db, _ = store_paths()
    return f"sqlite:///{db}"


def use_store(mlflow_params: MlflowParams | None = None) -> str:
    """Point MLflow (tracking and registry) at the project's store; return the URI."""
    uri = resolve_tracking_uri(mlflow_params)
    refuse_cleartext_credentials(uri, "the MLflow tracking URI")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


class LoginRefusedError(UserError):
    """The tracking server refused the request: no login, a wrong one, or no permission."""


def refused_login(err: Exception, uri: str) -> LoginRefusedError | None:
    """The one-line `LoginRefusedError` for an MLflow error of HTTP 401 or 403, else None.
    It names the variables to set, never their values."""
    status = getattr(err, "get_http_status_code", lambda: None)()
    if status not in (401, 403):
        return None
    user = read_mlflow_creds().username  # the variables, then ~/.mlflow/credentials
    if status == 403:
        return LoginRefusedError(
            f"the MLflow server {redact_url(uri)} refused user {user!r} (HTTP 403: no "
            "permission): ask its admin for EDIT permission, or set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD to another login"
        )
    given = "a request without login"
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        given = f"the login of MLFLOW_TRACKING_USERNAME={user!r}"
    elif user:
        given = f"the login {user!r} of ~/.mlflow/credentials"
    return LoginRefusedError(
        f"the MLflow server {redact_url(uri)} refused {given} (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to "
        "your login on that server"
    )


def experiment_artifact_location(name: str, root: Path | None = None) -> str:
    """`file://<root>/mlruns/artifacts/<experiment name as a folder name>`."""
    _, artifacts = store_paths(root)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"
    return (artifacts / slug).as_uri()


def configure(mlflow_params: MlflowParams) -> str:
    """Set the tracking URI, make sure the experiment exists, select it; return its id.

    A local SQLite store (a `sqlite:` URI) gets an explicit artifact location under
    `<root>/mlruns/artifacts/`; a tracking server decides its own (e.g. served artifacts).
    """
    uri = use_store(mlflow_params)
    name = mlflow_params.experiment
    client = mlflow.MlflowClient()
    try:  # the first request: a server that refuses the login says so here, in one line
        experiment = client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as err:
        raise (refused_login(err, uri) or err) from None
    if experiment is None:
        location = experiment_artifact_location(name) if uri.startswith("sqlite:") else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as err:
            # another machine created it a moment ago (two clones starting together)
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
