"""Distributed tuning that survives a lost machine: tuning workers started from three
clones (standing in for machines) share one study on the team's PostgreSQL and log to the
team's MLflow server; one is SIGKILLed mid-trial. A live worker's heartbeat check fails
the dead trial and Optuna's `RetryHeartbeatStaleTrialCallback` runs it again; the study still
reaches `tune.n_trials` exactly, every trial number runs once, each with one child run.

Skipped, with the reason, when PostgreSQL cannot start here (`.ci/run` starts it)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import yaml
from conftest import REPO
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool
from team_server import Team, team_tests
from test_tuning import make_cache, make_params

pytestmark = team_tests
N_TRIALS = 6
HEARTBEAT_S, GRACE_S = 1, 8  # the test's; params.yaml ships 60 and 180


def clone(root: Path) -> Path:
    """A repository root with the tiny feature cache (identical in every clone) and a
    params.yaml whose trials take a few seconds (30 epochs, no early stopping)."""
    make_cache(root)
    params = make_params(
        "team-tuning",
        study="team-study",
        n_trials=N_TRIALS,
        n_startup_trials=N_TRIALS,
        heartbeat_interval_s=HEARTBEAT_S,
        grace_period_s=GRACE_S,
        max_retry=2,
    )
    sections = {
        name: getattr(params, name).model_dump(mode="json")
        for name in ("tune", "train", "model", "data", "mlflow")
    }
    sections["train"].update(epochs=30, early_stopping={"enabled": False})
    sections["split"], sections["featurize"] = (
        {"out_dir": "data/split"},
        {"out_dir": "data/features"},
    )
    (root / "params.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))
    return root


def start_worker(team: Team, root: Path, user: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **team.client_env(user),
        "PETSCAN_ROOT": str(root),
        "PETSCAN_TUNE_STORAGE": team.optuna_url,  # no password: PGPASSFILE has it
        "PYTHONPATH": str(REPO / "src"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTRAOP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "stages" / "tune.py"),
            "--no-progress",
            "--params",
            str(root / "params.yaml"),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def observer(team: Team) -> optuna.storages.RDBStorage:
    """The test's own view of the study: connections closed after each look (a storage per
    look would hold its connections until garbage-collected, and PostgreSQL's 100 are
    shared with the server and the workers)."""
    return optuna.storages.RDBStorage(team.optuna_url, engine_kwargs={"poolclass": NullPool})


def wait_for_trial(
    storage: optuna.storages.RDBStorage, worker: subprocess.Popen, timeout_s: float = 180
) -> int | None:
    """The number of a trial `worker` is running (its MLflow child run started), or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="team-study", storage=storage)
        except KeyError:
            continue  # not created yet
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker", "").endswith(f":{worker.pid}") and (
                "mlflow_run_id" in trial.user_attrs
            ):
                return trial.number
    return None


def test_a_killed_worker_trial_is_failed_by_heartbeat_retried_and_the_study_completes(
    team, tmp_path, monkeypatch
):
    monkeypatch.setenv("PGPASSFILE", str(team.pgpass))
    for key, value in team.client_env("w0").items():
        monkeypatch.setenv(key, value)
    roots = [clone(tmp_path / f"machine{i}") for i in range(3)]
    storage = observer(team)
    # machine 0 starts the study; machines 1 and 2 join it; machine 2 dies mid-trial
    workers = [start_worker(team, roots[0], "w0")]
    assert wait_for_trial(storage, workers[0]) is not None, workers[0].communicate()[0][-3000:]
    workers += [start_worker(team, root, f"w{i}") for i, root in enumerate(roots[1:], 1)]
    victim = workers[2]
    try:
        killed = wait_for_trial(storage, victim)
        assert killed is not None, "machine 2 never ran a trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        outputs = [w.communicate(timeout=300)[0] for w in workers[:2]]
        assert [w.returncode for w in workers[:2]] == [0, 0], "\n".join(outputs)[-4000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()

    trials = optuna.load_study(study_name="team-study", storage=storage).get_trials()
    # a trial asked at the same moment as the last one needed is recorded, not run
    surplus = [t.number for t in trials if t.user_attrs.get("surplus")]
    ran = [t for t in trials if t.number not in surplus]
    states = collections.Counter(t.state for t in ran)
    summary = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
    assert states[TrialState.COMPLETE] == N_TRIALS, summary  # exactly: no pruner here
    assert states[TrialState.FAIL] == 1 and trials[killed].state == TrialState.FAIL, summary
    assert len(ran) == N_TRIALS + 1 and sorted(t.number for t in trials) == list(range(len(trials)))
    (retry,) = [
        t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed
    ]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[killed].params
    assert not retry.user_attrs["worker"].endswith(f":{victim.pid}")  # a live machine ran it
    assert any("heartbeats" in out and f"trial {killed}" in out for out in outputs), outputs

    # one child run per trial on the server; the lost trial's run closed as KILLED
    client = mlflow.MlflowClient(team.uri)
    experiment = client.get_experiment_by_name("team-tuning")
    children = client.search_runs(
        [experiment.experiment_id], "tags.`optuna.trial_number` != ''", max_results=1000
    )
    numbers = collections.Counter(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == collections.Counter(t.number for t in ran)  # each trial that ran: once
    lost = next(r for r in children if r.data.tags["optuna.trial_number"] == str(killed))
    assert lost.info.status == "KILLED" and lost.data.tags["optuna.trial_state"] == "lost"
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1  # the three machines found the same study run
