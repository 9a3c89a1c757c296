"""The team's services for the tests: `deploy/team-up` in a private state folder, on a free
port of 127.0.0.1, with its own PostgreSQL role and databases; `deploy/team-down --purge`
afterwards. The `team` fixture (conftest.py) starts one for the whole session and skips,
with the reason, when PostgreSQL cannot start here.

The team tests run when PETSCAN_TEST_TEAM is set (`.ci/run` sets it once PostgreSQL is up;
`make test-team` does too): on a laptop without PostgreSQL they would only be skipped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, free_port

VENV_BIN = Path(sys.executable).parent
USERS = ("alice", "bob", "w0", "w1", "w2")  # two researchers, three tuning machines
team_tests = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("PETSCAN_TEST_TEAM"),
        reason="set PETSCAN_TEST_TEAM=1 (`make test-team`; CI does) to run the team tests "
        "against PostgreSQL",
    ),
]


@dataclass
class Team:
    uri: str
    state: Path
    env: dict  # the environment of deploy/*: PETSCAN_TEAM_DIR, PORT, DB
    optuna_url: str  # no password: libpq reads it from PGPASSFILE
    pgpass: Path
    admin_password: str
    logins: dict = field(default_factory=dict)  # user -> password

    def client_env(self, user: str | None, password: str | None = None) -> dict:
        """Variables of a client logging in as `user` (None: no login)."""
        env = {"MLFLOW_TRACKING_URI": self.uri, "PGPASSFILE": str(self.pgpass)}
        if user is not None:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = (
                password if password is not None else self.logins[user]
            )
        return env

    def secrets(self) -> list[str]:
        """Every password of the team: none may appear in a log, tag, param or file."""
        db = (self.state / "db_password").read_text().strip()
        return [self.admin_password, db, *self.logins.values()]


def read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@contextlib.contextmanager
def team_up(tmp: Path, users: tuple[str, ...] = ()) -> Iterator[Team | str]:
    """Yield a running `Team`, or the reason (a string) why none could start."""
    prefix = f"petscan_t{os.getpid()}"
    env = {
        **os.environ,
        "PETSCAN_TEAM_DIR": str(tmp / "team-state"),
        "PETSCAN_TEAM_PORT": str(free_port()),
        "PETSCAN_TEAM_PG_PORT": str(free_port()),
        "PETSCAN_TEAM_DB": prefix,
        "MLFLOW_BIN": str(VENV_BIN / "mlflow"),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    up = subprocess.run(
        [str(REPO / "deploy" / "team-up")], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        if up.returncode != 0:
            yield f"make team-up failed here: {(up.stderr or up.stdout).strip()[-500:]}"
            return
        state = tmp / "team-state"
        team_env = read_env(state / "team.env")
        team = Team(
            uri=team_env["MLFLOW_TRACKING_URI"],
            state=state,
            env=env,
            optuna_url=team_env["PETSCAN_TEAM_OPTUNA_URL"],
            pgpass=Path(team_env["PGPASSFILE"]),
            admin_password=read_env(state / "admin.env")["MLFLOW_TRACKING_PASSWORD"],
        )
        for user in users:
            subprocess.run(
                [str(REPO / "deploy" / "team-user"), user],
                env=env,
                check=True,
                timeout=120,
                capture_output=True,
            )
            team.logins[user] = read_env(state / "users" / f"{user}.env")[
                "MLFLOW_TRACKING_PASSWORD"
            ]
        yield team
    finally:
        subprocess.run(
            [str(REPO / "deploy" / "team-down"), "--purge"],
            env=env,
            capture_output=True,
            timeout=120,
        )
