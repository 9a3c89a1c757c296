"""A training run whose process was killed is marked KILLED by the next training run; runs of
live processes, of other hosts, or that do not say who owns them are left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest
from conftest import REPO

from petscan.params.schema import section
from petscan.tracking import run_owner, runs, store

EXPERIMENT = section("mlflow", {"experiment": "e"})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


@pytest.fixture
def zombie():
    """A child that has ended and is not yet collected (its pid still exists)."""
    proc = subprocess.Popen(["true"])
    while run_owner._stat(proc.pid)[:1] != ["Z"]:
        time.sleep(0.01)
    yield proc
    proc.wait()


def test_the_next_run_marks_runs_of_dead_processes_killed_and_leaves_the_rest(
    mlflow_store, sleeper, zombie, capsys
):
    experiment_id = store.configure(EXPERIMENT)
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    live = run_owner.owner_tags(sleeper.pid)
    tags = {
        "dead": {run_owner.PID_TAG: str(dead_pid()), run_owner.HOST_TAG: host},
        "live": live,
        "pid_reused": {**live, run_owner.START_TAG: "1"},  # same pid, another process
        "zombie": run_owner.owner_tags(zombie.pid),
        "other_host": {run_owner.PID_TAG: str(dead_pid()), run_owner.HOST_TAG: "elsewhere"},
        "no_owner": {},
    }
    opened = {n: client.create_run(experiment_id, tags=t).info.run_id for n, t in tags.items()}
    assert {status(r) for r in opened.values()} == {"RUNNING"}
    capsys.readouterr()

    with runs.start_training_run(EXPERIMENT, {}, {}) as run:
        assert run.data.tags[run_owner.PID_TAG] == str(os.getpid())
        assert run.data.tags[run_owner.HOST_TAG] == host
    after = {name: status(run_id) for name, run_id in opened.items()}
    assert after == {
        "dead": "KILLED",
        "live": "RUNNING",
        "pid_reused": "KILLED",
        "zombie": "KILLED",
        "other_host": "RUNNING",
        "no_owner": "RUNNING",
    }
    assert status(run.info.run_id) == "FINISHED"
    [line] = capsys.readouterr().err.splitlines()
    prefix = "train: marked 3 interrupted MLflow runs KILLED (process gone): "
    assert line.startswith(prefix)
    killed = {opened["dead"], opened["pid_reused"], opened["zombie"]}
    assert set(line.removeprefix(prefix).split(", ")) == killed


KILLED_MID_RUN = """
import sys, time
from petscan.params.schema import section
from petscan.tracking import runs
with runs.start_training_run(section("mlflow", {"experiment": "e"}), {}, {}) as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def test_a_training_process_killed_with_sigkill_leaves_a_run_the_next_one_closes(
    mlflow_store, capsys
):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_RUN], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        run_id = proc.stdout.readline().strip()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store.use_store(EXPERIMENT)
    assert run_id and status(run_id) == "RUNNING"  # what MLflow alone leaves behind
    with runs.start_training_run(EXPERIMENT, {}, {}):
        pass
    assert status(run_id) == "KILLED"
    assert capsys.readouterr().err == (
        f"train: marked 1 interrupted MLflow run KILLED (process gone): {run_id}\n"
    )
