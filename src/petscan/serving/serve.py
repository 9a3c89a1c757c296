"""`petscan serve`: MLflow's scoring server for a registered model, on the project's store.

Runs `mlflow models serve --env-manager local` from this Python environment, with
`MLFLOW_TRACKING_URI` set to the project's store (`serving.loading.open_store`) and
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

import petscan
from petscan.params.loading import load_sections, stage_parser
from petscan.serving import listen
from petscan.serving.loading import find_model, open_store
from petscan.utils.errors import reports_user_errors
from petscan.utils.redact import redact_text

# MLflow (and TensorFlow, through the tracking code) are imported by `loading` when a model is
# looked up, not here: `petscan serve --help` then answers in about 1 s instead of 13 s.

SECTIONS = ("serve", "mlflow")


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
        str(port),
        "--workers",
        str(workers),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__, prog="petscan serve")
    parser.add_argument("--model", help="MLflow model URI, e.g. models:/pet-classifier@champion")
    parser.add_argument("--host", help="address to listen on (default serve.host)")
    parser.add_argument("--port", type=int, help="port (default serve.port)")
    return parser


@reports_user_errors("petscan serve")
def main(argv: list[str] | None = None) -> int:
    """Exit codes: see `petscan.utils.errors` (a missing store or model: one line, exit 1)."""
    args = build_parser().parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    serve = params.serve
    host, port = args.host or serve.host, args.port or serve.port
    what = "the scoring server (which reads any image path it is sent on this machine)"
    listen.warn_if_exposed("petscan serve", host, "--host" if args.host else "serve.host", what)
    tracking_uri = open_store(params.mlflow)
    uri = find_model(args.model or serve.model, params.mlflow)  # before MLflow's server
    command = scoring_command(uri, host, port, serve.workers)
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
