"""Load on the team's MLflow server: N concurrent clients logging per-epoch metrics.

Each client (its own process, its own login from the environment) opens a run and logs,
"epoch" after "epoch", a batch of 4 metrics (loss, val_loss, accuracy, learning_rate) at
step = epoch, as training does, for `--seconds`. Afterwards every run's metric histories are
read back: the points stored must equal the points sent. The server's processes (its pid
file's process group) are sampled for memory (RSS) every second; a 5xx is any request that
failed after MLflow's own retries, or a `" 5xx` status in the server's log.

    set -a; source ~/.config/petscan/team/team.env; source ~/.config/petscan/team/admin.env
    python bench/team_load.py --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import re
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("loss", "val_loss", "accuracy", "learning_rate")


def client(index: int, seconds: float, uri: str, experiment_id: str, out: mp.Queue) -> None:
    """One client: a run, batches of per-epoch metrics until the time is up. Always puts
    its result, so a client that cannot even open its run fails the load at once."""
    import mlflow
    from mlflow.entities import Metric

    sys.stdout = sys.stderr  # MLflow prints each run's URL: stdout is the figures' JSON
    mlflow_client = mlflow.MlflowClient(uri)
    sent, errors, latencies, step, run_id = 0, [], [], 0, None
    try:
        run_id = mlflow_client.create_run(experiment_id, run_name=f"load-{index}").info.run_id
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = int(time.time() * 1000)
            batch = [Metric(k, 1.0 / (step + 1) + i, now, step) for i, k in enumerate(METRICS)]
            started = time.monotonic()
            try:
                mlflow_client.log_batch(run_id, metrics=batch)
                sent += len(batch)
            except Exception as err:  # after MLflow's own retries
                errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            latencies.append(time.monotonic() - started)
            step += 1
        mlflow_client.set_terminated(run_id)
    except Exception as err:
        errors.append(f"{type(err).__name__}: {str(err)[:200]}")
    out.put({"run_id": run_id, "sent": sent, "errors": errors, "latencies": latencies})


def server_rss_mb(pid: int) -> float:
    """Resident memory of the server's process group (the server and its workers)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total / 2**20


def rss_every(memory: list[tuple[float, float]], step_s: float, until_s: float) -> list[float]:
    """The first memory sample at or after 0, step_s, 2 step_s, ... until the load ends."""
    marks = np.arange(0.0, until_s + 1e-9, step_s)
    return [next((m for t, m in memory if t >= mark), memory[-1][1]) for mark in marks]


def run_load(clients: int, seconds: float, state: Path, uri: str) -> dict:
    """Run the load on the server at `uri` (the login from the environment); return the
    figures (points sent and stored, errors, memory, latency)."""
    import mlflow

    pid = int((state / "mlflow.pid").read_text())
    log_path = state / "mlflow.log"
    log_start = log_path.stat().st_size
    mlflow_client = mlflow.MlflowClient(uri)
    name = f"team-load-{os.getpid()}-{int(time.time())}"
    experiment_id = mlflow_client.create_experiment(name)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(i, seconds, uri, experiment_id, out))
        for i in range(clients)
    ]
    memory = [(0.0, server_rss_mb(pid))]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = []
    while len(results) < clients:
        with_timeout = max(0.1, 1.0 - (time.monotonic() - started) % 1.0)
        with contextlib.suppress(queue.Empty):
            results.append(out.get(timeout=with_timeout))
        memory.append((time.monotonic() - started, server_rss_mb(pid)))
        if time.monotonic() - started > seconds + 300:
            raise RuntimeError("clients did not finish within 5 minutes after the load")
    for p in procs:
        p.join()
    stored = 0
    for result in results:
        if result["run_id"] is None:
            continue
        for key in METRICS:
            stored += len(mlflow_client.get_metric_history(result["run_id"], key))
    log = log_path.read_text(errors="ignore")[log_start:]
    server_5xx = len(re.findall(r'" 5\d\d', log))
    rss = np.array([m for _, m in memory])
    k = max(1, len(rss) // 5)
    latencies = np.concatenate([r["latencies"] for r in results])
    return {
        "clients": clients,
        "seconds": seconds,
        "points_sent": sum(r["sent"] for r in results),
        "points_stored": stored,
        "client_errors": sum(len(r["errors"]) for r in results),
        "first_errors": [e for r in results for e in r["errors"]][:3],
        "server_5xx_in_log": server_5xx,
        "batches_per_s": round(len(latencies) / seconds, 1),
        "latency_ms_median": round(float(np.median(latencies)) * 1000, 1),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "server_rss_mb_first_fifth": round(float(rss[:k].mean()), 1),
        "server_rss_mb_last_fifth": round(float(rss[-k:].mean()), 1),
        "server_rss_mb_max": round(float(rss.max()), 1),
        "server_rss_mb_every_10_s": [
            round(m, 1) for m in rss_every(memory, step_s=10.0, until_s=seconds)
        ],
        "experiment": name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    default_state = Path(os.environ.get("PETSCAN_TEAM_DIR", "~/.config/petscan/team"))
    parser.add_argument("--state", type=Path, default=default_state, help="team-up's folder")
    args = parser.parse_args(argv)
    if not (args.clients <= 32 and args.seconds <= 600):
        parser.error("bounded: at most 32 clients and 600 seconds")
    if "MLFLOW_TRACKING_URI" not in os.environ:
        parser.error("set MLFLOW_TRACKING_URI (and the login): source team.env and a user's env")
    figures = run_load(
        args.clients, args.seconds, args.state.expanduser(), os.environ["MLFLOW_TRACKING_URI"]
    )
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
