"""Two researchers, one server: `make team-up` (PostgreSQL, MLflow with logins and proxied
artifacts) on 127.0.0.1, two clones of the tiny pipeline logging to it, a DVC remote between
them; refused logins are one line and no password is recorded anywhere.

Skipped, with the reason, when PostgreSQL cannot start here (`.ci/run` starts it)."""

from __future__ import annotations

import json
import stat
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from conftest import REPO
from team_server import VENV_BIN, Team, team_tests
from test_pipeline import FIGURES, dvc, git, tiny_repo

pytestmark = team_tests


def get(team: Team, path: str, login: tuple[str, str] | None) -> tuple[int, dict]:
    """GET an MLflow REST endpoint, with basic auth when `login` is given."""
    request = urllib.request.Request(f"{team.uri}/api/2.0/mlflow/{path}")
    if login:
        token = b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def failing_dvc(root: Path, env: dict, *args: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_team_up_keeps_its_secrets_private_and_refuses_anonymous_requests(team):
    assert stat.S_IMODE(team.state.stat().st_mode) == 0o700
    for name in ("admin.env", "auth.ini", "pgpass", "db_password", "team.env", "flask_secret"):
        assert stat.S_IMODE((team.state / name).stat().st_mode) == 0o600, name
    assert team.uri.startswith("http://127.0.0.1:")
    pid = (team.state / "mlflow.pid").read_text().strip()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert cmdline[cmdline.index("--host") + 1] == "127.0.0.1"
    assert not any(secret in " ".join(cmdline) for secret in team.secrets())  # `ps` shows it
    assert "@127.0.0.1" in cmdline[cmdline.index("--backend-store-uri") + 1]  # no password
    assert get(team, "experiments/search?max_results=1", None)[0] == 401
    assert get(team, "experiments/search?max_results=1", ("alice", "wrong"))[0] == 401
    assert get(team, "experiments/search?max_results=1", ("admin", team.admin_password))[0] == 200
    assert get(team, "experiments/search?max_results=1", ("bob", team.logins["bob"]))[0] == 200


def test_two_clones_share_one_experiment_registry_and_remote(team, tmp_path):
    import mlflow

    first, env = tiny_repo(tmp_path / "alice")
    # no login, then a wrong password: one line from the train stage, no traceback
    for user, password, said in (
        (None, None, "refused a request without login (HTTP 401)"),
        ("alice", "wrong", "refused the login of MLFLOW_TRACKING_USERNAME='alice' (HTTP 401)"),
    ):
        out = failing_dvc(first, {**env, **team.client_env(user, password)}, "repro")
        (line,) = [line for line in out.splitlines() if line.startswith("train: error:")]
        assert said in line and "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
        assert "Traceback" not in out
    alice = {**env, **team.client_env("alice")}
    logs = [dvc(first, alice, "repro")]

    # the DVC remote: a local folder standing in for S3
    dvc(first, env, "add", "data/raw")
    dvc(first, env, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    git(first, env, "add", "-A")
    git(first, env, "commit", "-qm", "first run, data/raw tracked, the shared remote")
    dvc(first, env, "push")
    second = tmp_path / "bob"
    git(tmp_path, env, "clone", "-q", str(first), str(second))
    bob = {**env, **team.client_env("bob"), "PYTHONPATH": str(second / "src")}
    bob["PETSCAN_ROOT"] = str(second)
    dvc(second, bob, "pull")
    assert "Data and pipelines are up to date" in dvc(second, bob, "status")
    assert "Running stage" not in dvc(second, bob, "repro")
    logs.append(dvc(second, bob, "exp", "run", "-S", "train.seed=7"))  # bob's own training

    # both runs, their metrics, figures and datasets, in one experiment on the server
    admin = mlflow.MlflowClient(team.uri, registry_uri=team.uri)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in team.client_env("admin", team.admin_password).items():
            patch.setenv(key, value)
        experiment = admin.get_experiment_by_name("pet-classification")
        runs = admin.search_runs([experiment.experiment_id], "tags.model_sha256 != ''")
        assert len(runs) == 2
        hashes = {
            json.loads((root / "models" / "train.json").read_text())["model_sha256"]: name
            for root, name in ((first, "alice"), (second, "bob"))
        }
        assert {run.data.tags["model_sha256"]: run for run in runs}.keys() == hashes.keys()
        for run in runs:
            assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0
            assert len(admin.get_metric_history(run.info.run_id, "loss")) >= 1
            figures = admin.list_artifacts(run.info.run_id, "figures")
            assert {Path(a.path).name for a in figures} == FIGURES
            contexts = {
                tag.value
                for d in run.inputs.dataset_inputs
                for tag in d.tags
                if tag.key == "mlflow.data.context"
            }
            assert contexts == {"train", "validation", "test"}
        # two versions of the registered model, one from each clone
        versions = admin.search_model_versions("name = 'pet-classifier'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        assert {v.run_id for v in versions} == {run.info.run_id for run in runs}
        first_version = next(
            v
            for v in versions
            if hashes[by_run(runs)[v.run_id].data.tags["model_sha256"]] == "alice"
        )
        admin.set_registered_model_alias("pet-classifier", "alice-best", first_version.version)
        recorded = [str(run.data.params) + str(run.data.tags) for run in runs] + [
            v.description + str(v.tags) for v in versions
        ]

    # bob loads alice's model by its alias, through the server's proxied artifacts
    images = first / "data" / "raw" / "No cancer"
    by_alias = ("--model-uri", "models:/pet-classifier@alice-best")
    from_bob = predict_csv(second, bob, images, by_alias, tmp_path / "bob.csv")
    local_file = ("--model", str(first / "models" / "model.keras"))
    from_alice = predict_csv(first, env, images, local_file, tmp_path / "alice.csv")
    assert from_bob == from_alice

    # no password anywhere: the logs, params, tags, registry descriptions, the repositories
    files = [
        p.read_text(errors="ignore")
        for root in (first, second)
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts and p.stat().st_size < 1_000_000
    ]
    for secret in team.secrets():
        for text in (*logs, *recorded, *files):
            assert secret not in text


def predict_csv(root: Path, env: dict, images: Path, model: tuple[str, str], out: Path) -> str:
    """`petscan predict` of `images` with `model` (its option and value), run in `root`:
    the CSV it writes."""
    command = [str(VENV_BIN / "petscan"), "predict", str(images), *model, "--csv", str(out)]
    subprocess.run(command, cwd=root, env=env, check=True, capture_output=True, text=True)
    return out.read_text()


def by_run(runs: list) -> dict:
    return {run.info.run_id: run for run in runs}


def test_eight_clients_logging_metrics_lose_no_point_and_get_no_5xx(team, monkeypatch):
    """bench/team_load.py, short: 8 processes logging per-epoch metric batches for 5 s."""
    for key, value in team.client_env("admin", team.admin_password).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # importable by the spawned clients
    import team_load as bench

    figures = bench.run_load(clients=8, seconds=5, state=team.state, uri=team.uri)
    assert figures["points_sent"] > 0 and figures["points_stored"] == figures["points_sent"]
    assert figures["client_errors"] == 0 and figures["server_5xx_in_log"] == 0, figures


def test_a_user_without_permission_on_the_experiment_gets_one_line_403(team, tmp_path, monkeypatch):
    import mlflow
    from mlflow.server import get_app_client

    from petscan.params.results import MlflowParams
    from petscan.tracking.store import LoginRefusedError, configure

    for key, value in team.client_env("admin", team.admin_password).items():
        monkeypatch.setenv(key, value)
    experiment_id = mlflow.MlflowClient(team.uri).create_experiment("team-private")
    admin = get_app_client("basic-auth", tracking_uri=team.uri)
    admin.grant_user_permission("w2", "experiment", experiment_id, "DENY")
    # w2 logs in with MLflow's credentials file: allowed in general, denied on this one
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = w2\nmlflow_tracking_password = {team.logins['w2']}\n"
    )
    assert configure(MlflowParams(tracking_uri=team.uri, experiment="team-shared"))
    with pytest.raises(LoginRefusedError) as refused:
        configure(MlflowParams(tracking_uri=team.uri, experiment="team-private"))
    said = str(refused.value)
    assert "refused user 'w2' (HTTP 403: no permission)" in said and "\n" not in said
    assert team.logins["w2"] not in said
