"""`petscan serve`: MLflow's scoring server for a registered model, on the project's store.

Runs `mlflow models serve --env-manager local` from this Python environment, with
`MLFLOW_TRACKING_URI` set to the project's store (`tracking.resolve_tracking_uri`) and
this environment's `bin/` first on PATH (MLflow starts the server as the `uvicorn`
command, which is not found otherwise). The model is `--model`, else `serve.model` in
params.yaml, else the latest version of `mlflow.registered_model`.

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_split": {"columns": ["path"], "data": [["scan.png"]]}}'

Research use only: not a medical device.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import petscan
from petscan.params import loading as config
from petscan.serving import listen
from petscan.utils.errors import MissingInputError, UserError, reports_user_errors
from petscan.utils.redact import redact_text

# MLflow (and TensorFlow, through tracking) are imported in the functions that use them, not
# here: `petscan serve --help` then answers in about 1 s instead of 13 s (2 cores).

SECTIONS = ("serve", "mlflow")


def latest_version_uri(name: str) -> str:
    """`models:/<name>/<highest version>` in the current registry."""
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(
            f"no version of the model {name!r} is registered in {mlflow.get_registry_uri()}: "
            "train one first (`make run` or `dvc repro`)"
        )
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def resolve_model_uri(uri: str | None, mlflow_params: dict[str, Any]) -> str:
    """`uri` as given, or the latest version of `mlflow.registered_model` (store already set)."""
    if uri:
        return uri
    name = mlflow_params.get("registered_model")
    if not name:
        raise LookupError(
            "no model given and mlflow.registered_model is null in params.yaml: "
            "pass --model models:/<name>/<version>"
        )
    return latest_version_uri(name)


def mlflow_params_from(params_path: str | Path | None = None) -> dict[str, Any]:
    """The `mlflow` section of params.yaml (default: the one at the repository root), or {}."""
    path = Path(params_path) if params_path else config.workspace_root() / config.PARAMS_FILE
    if not path.is_file():
        return {}
    return config.load_params(path).get("mlflow") or {}


def load_pyfunc(uri: str | None = None, params_path: str | Path | None = None):
    """An MLflow model of this project, read from the project's store (see `petscan.load_model`)."""
    import mlflow

    from petscan.tracking import runs as tracking

    mlflow_params = mlflow_params_from(params_path)
    store = tracking.resolve_tracking_uri(mlflow_params)
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(
            f"no MLflow store at {store}: run from the repository (or set MLFLOW_TRACKING_URI) "
            "and train a model first (`make run`)"
        )
    tracking.use_store(mlflow_params)
    return mlflow.pyfunc.load_model(resolve_model_uri(uri, mlflow_params))


class ModelNotFoundError(UserError):
    """The model to serve is not in the store (or cannot be read from it)."""


def open_store(mlflow_params: dict[str, Any]) -> str:
    """Select the project's MLflow store (`tracking.use_store`); return its URI. A local
    SQLite store that does not exist is a `MissingInputError`, not created empty."""
    from petscan.tracking import runs as tracking

    store = tracking.resolve_tracking_uri(mlflow_params)
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise MissingInputError(
            f"no MLflow store at {store}: run from the repository (or set MLFLOW_TRACKING_URI) "
            "and train a model first (`make run`)"
        )
    return tracking.use_store(mlflow_params)


def find_model(uri: str | None, mlflow_params: dict[str, Any]) -> str:
    """The URI of the model to serve (`resolve_model_uri`), checked to be in the store
    (store already selected): `ModelNotFoundError`, one line, when it is not."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        uri = resolve_model_uri(uri, mlflow_params)
        mlflow.models.get_model_info(uri)  # reads only its MLmodel file
    except LookupError as err:
        raise ModelNotFoundError(redact_text(str(err))) from None
    except (MlflowException, OSError, ValueError, ImportError) as err:  # a wrong or absent URI
        if isinstance(err, ImportError):  # e.g. s3:// without boto3
            err = f"it needs the Python module {err.name!r}, which is not installed"
        reason = " ".join(str(err).split())[:300]
        store = mlflow.get_tracking_uri()
        raise ModelNotFoundError(
            redact_text(
                f"cannot load the model {uri} from {store}: {reason}; train one (`make run`) "
                "or pass --model with a registered version"
            )
        ) from None
    return uri


def server_environment(tracking_uri: str) -> dict[str, str]:
    """This process' environment, with the store, this Python's `bin/` and `petscan` on paths."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = tracking_uri
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # the server imports the same petscan code as this command (a checkout's src/ included)
    package_parent = str(Path(petscan.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def scoring_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """`mlflow models serve` with the local environment (no conda/virtualenv built)."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow_cli),
        "models",
        "serve",
        "--model-uri",
        uri,
        "--env-manager",
        "local",
        "--host",
        str(host),
        "--port",
        str(int(port)),
        "--workers",
        str(int(workers)),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = config.stage_parser(__doc__, prog="petscan serve")
    parser.add_argument("--model", help="MLflow model URI, e.g. models:/pet-classifier@champion")
    parser.add_argument("--host", help="address to listen on (default serve.host)")
    parser.add_argument("--port", type=int, help="port (default serve.port)")
    return parser


@reports_user_errors("petscan serve")
def main(argv: list[str] | None = None) -> int:
    """Exit codes: see `petscan.utils.errors` (a missing store or model: one line, exit 1)."""
    args = build_parser().parse_args(argv)
    params = config.load_sections(SECTIONS, args.params)
    serve, mlflow_params = params["serve"], params["mlflow"]
    host, port = args.host or serve["host"], args.port or serve["port"]
    what = "the scoring server (which reads any image path it is sent on this machine)"
    listen.warn_if_exposed("petscan serve", host, "--host" if args.host else "serve.host", what)
    tracking_uri = open_store(mlflow_params)
    uri = find_model(args.model or serve["model"], mlflow_params)  # before MLflow's server
    command = scoring_command(uri, host, port, serve.get("workers", 1))
    print(  # MLflow's server listens only once it has loaded the model: say so, not "on"
        redact_text(
            f"petscan serve: starting MLflow's scoring server for {uri} from {tracking_uri}"
        )
        + f"; it answers at http://{host}:{port}/invocations once the model is loaded "
        "(research use only: not a medical device)",
        file=sys.stderr,
        flush=True,
    )
    os.execve(command[0], command, server_environment(tracking_uri))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
