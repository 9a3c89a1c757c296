"""Several worker processes on one study (`make tune WORKERS=N`).

The main process writes a JSON spec (the study's params, root, storage URL, MLflow
parent run) and starts `python -m petscan.tuning --config SPEC --worker I` N times;
each worker optimizes on the shared storage until the study's target is reached.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from petscan.params.schema import validate
from petscan.params.space import check_space
from petscan.tracking import store
from petscan.tuning.data import load_tune_data
from petscan.tuning.objective import Objective
from petscan.tuning.storage import make_storage
from petscan.tuning.study import max_steps, open_study, optimize
from petscan.tuning.study_runs import Tracker, close_lost_trial_run, study_tags
from petscan.utils import io

if TYPE_CHECKING:
    from petscan.params.learning import TuneParams

EXIT_TRIPPED = 3  # a worker stopped by `tune.max_failures` failures in a row
EXIT_INTERRUPTED = 130


def worker_spec(
    params: Any,
    tune: TuneParams,
    root: Path,
    storage_url: str,
    experiment_id: str,
    parent_run_id: str,
) -> dict[str, Any]:
    """What a worker process needs to join the study (written as JSON): the sections of
    `params` that `run_tune` reads, with `tune` (the command line's values included)."""
    return {
        "params": {
            "tune": tune.model_dump(),
            **{name: getattr(params, name).model_dump() for name in ("train", "model", "data")},
            "mlflow": params.mlflow.model_dump(),
            "split": {"out_dir": params.split.out_dir},
            "featurize": {"out_dir": params.featurize.out_dir},
        },
        "root": str(root),
        "storage": storage_url,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
    }


def _thread_env(workers: int) -> dict[str, str]:
    """The environment with TensorFlow's threads shared out between the workers."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": threads,
    }


def spawn_workers(
    spec: Mapping[str, Any], workers: int, poll: Callable[[], None] = lambda: None
) -> None:
    """Run `workers` processes on `spec`; call `poll` every second until they all end."""
    tune = spec["params"]["tune"]
    config_path = Path(spec["root"]) / tune["out_dir"] / f".worker-{tune['study_name']}.json"
    io.write_json(config_path, spec, mode=0o600)  # the storage URL may hold a password
    env = _thread_env(workers)
    command = [sys.executable, "-m", "petscan.tuning", "--config", str(config_path), "--worker"]
    procs = [subprocess.Popen([*command, str(i)], env=env) for i in range(workers)]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            poll()
    except KeyboardInterrupt:
        for p in procs:  # the terminal sent SIGINT to them too; wait for them to record it
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        raise
    finally:
        if all(p.poll() is not None for p in procs):
            config_path.unlink(missing_ok=True)
    codes = [p.returncode for p in procs]
    if any(codes):
        raise RuntimeError(f"tuning workers exited with codes {codes}; see their messages above")


def run_worker(config_path: str | Path, worker: int) -> int:
    """One worker process: load the features, optimize its share on the shared storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = io.read_json(config_path)
    params, root = validate(spec["params"], config_path), Path(spec["root"])
    tune = params.tune
    data = load_tune_data(root, params)
    storage = make_storage(spec["storage"], tune, close_lost_trial_run)
    study = open_study(tune, storage, max_steps(params.train, tune), worker=worker + 1)
    store.use_store(params.mlflow)
    tracker = Tracker(
        spec["experiment_id"], spec["parent_run_id"], tune.study_name, study_tags(data)
    )
    objective = Objective(params, data, check_space(params, config_path), tracker)
    guard = optimize(study, objective, tune.n_trials, tune.timeout_s, (), tune.max_failures)
    return EXIT_TRIPPED if guard.tripped else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m petscan.tuning --config SPEC --worker I`."""
    parser = argparse.ArgumentParser(
        prog="python -m petscan.tuning",
        description="A tuning worker process (started by stages/tune.py --workers N).",
    )
    parser.add_argument("--config", required=True, help="the JSON file written by the main process")
    parser.add_argument("--worker", type=int, default=0, help="worker index (seeds its sampler)")
    args = parser.parse_args(argv)
    try:
        return run_worker(args.config, args.worker)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
