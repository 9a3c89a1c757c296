"""Which process owns an MLflow run, and closing the runs of processes that are gone.

A run killed with its process (`kill -9`, out of memory, a power cut) never ends: MLflow
shows it RUNNING forever. Every run this project opens records its owner as tags (the
process id, the host, and the process' start time, which tells a reused pid from the
original). `close_interrupted` finds the runs of one experiment that are still RUNNING
although their process no longer exists on this host and marks them KILLED. A run of
another host, of a live process or without owner tags is left alone.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

PID_TAG = "petscan.pid"
HOST_TAG = "petscan.host"
START_TAG = "petscan.pid_start"  # the process' start time in clock ticks after boot (Linux)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first), or []."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces or ')'


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/<pid>/stat), or None if unknown."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that name the process owning a run (this process by default)."""
    pid = os.getpid() if pid is None else pid
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    if (start := process_start(pid)) is not None:
        tags[START_TAG] = start
    return tags


def process_alive(pid: int, start: str | None = None) -> bool:
    """True when `pid` runs on this host (and, if `start` is given and known, is the same
    process, not a later one that was given the same pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # a zombie: it has ended, its parent has not collected it yet
    if start is None or len(fields) <= 19:
        return True
    return fields[19] == start


def is_orphaned(tags: dict[str, str], host: str | None = None) -> bool:
    """True when the run's tags name a process of this host that no longer exists."""
    if tags.get(HOST_TAG) != (host or socket.gethostname()):
        return False
    try:
        pid = int(tags[PID_TAG])
    except (KeyError, ValueError):
        return False
    return not process_alive(pid, tags.get(START_TAG))


def close_interrupted(experiment_id: str, prog: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `experiment_id` whose process is gone; say so in one
    line on stderr (`prog: ...`). Returns their run ids."""
    import mlflow

    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    closed = []
    for run in running:
        if is_orphaned(run.data.tags):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        noun = "run" if len(closed) == 1 else "runs"
        print(
            f"{prog}: marked {len(closed)} interrupted MLflow {noun} KILLED (process gone): "
            + ", ".join(closed),
            file=sys.stderr,
            flush=True,
        )
    return closed
