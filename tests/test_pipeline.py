"""The whole DVC pipeline, tiny, in a temporary copy of the repository.

`dvc repro` runs split -> fetch_weights -> featurize -> train -> evaluate -> plot on a
tiny synthetic data set (tiny backbone, 32 x 32 images, random-init weights); the MLflow
run is then read back. `dvc exp run -S train.epochs=2` must re-run train, evaluate and
plot but not featurize, and add a second MLflow run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FIGURES = {
    "training_curves.png",
    *(
        f"{kind}_{split}.png"
        for kind in ("confusion", "roc", "pr", "reliability")
        for split in ("val", "test")
    ),
}


def repo_files() -> list[str]:
    """Tracked files plus untracked, not ignored ones (work in progress)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def tiny_params(path: Path) -> dict:
    params = yaml.safe_load(path.read_text())
    params["synthetic"].update(
        counts={"No cancer": 14, "breast cancer": 14, "prostate cancer": 14},
        images_per_patient=[1, 2],
        base_height=64,
    )
    params["split"].update(ratios=[0.6, 0.2, 0.2], min_side=8)  # tiny images
    params["weights"].update(sources=[], fallback="random")
    params["model"].update(backbone="tiny", input_size=[32, 32], head_units=8)
    params["featurize"].update(augment_views=1, batch_size=16)
    params["train"].update(epochs=3, batch_size=8)
    params["evaluate"].update(bootstrap_resamples=50)
    params["mlflow"]["tracking_uri"] = None
    return params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    for name in repo_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = tiny_params(root / "params.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root / "src"),
        PETSCAN_ROOT=str(root),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONHASHSEED="0",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    from petscan.synthetic import generate

    syn = params["synthetic"]
    generate(
        root / syn["out_dir"],
        syn["counts"],
        syn["seed"],
        syn["images_per_patient"],
        syn["base_height"],
        workers=1,
        progress=False,
    )
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    if not (root / ".dvc").is_dir():
        subprocess.run([VENV_BIN / "dvc", "init", "-q"], cwd=root, env=env, check=True)
    return root, env


def dvc(root: Path, env: dict, *args: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`dvc {' '.join(args)}` failed:\n{output[-6000:]}"
    return output


@pytest.mark.slow
def test_dvc_repro_then_experiment_logs_to_mlflow(workspace):
    import mlflow

    root, env = workspace
    dvc(root, env, "repro")

    info = json.loads((root / "models" / "train.json").read_text())
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert info["random_init"] is True and metrics["random_init"] is True
    assert {p.name for p in (root / "reports" / "figures").iterdir()} == FIGURES
    assert 1 <= info["epochs_run"] <= 3 and 0 <= info["best_epoch"] < info["epochs_run"]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0

    shown = json.loads(dvc(root, env, "metrics", "show", "--json"))
    workspace_metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert workspace_metrics["test"]["accuracy"] == metrics["test"]["accuracy"]
    plots = json.loads(dvc(root, env, "plots", "show", "--json", "--split"))["data"]
    assert {"loss", "accuracy", "confusion_test", "confusion_val"} <= set(plots)
    assert {f"reports/figures/{name}" for name in FIGURES} <= set(plots)

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["model.backbone"] == "tiny"
    assert run.data.tags["random_init"] == "true"
    assert run.data.tags["collapse"] == str(info["collapse"]["collapsed"]).lower()
    assert metrics["collapse"]["collapsed"] == info["collapse"]["collapsed"]
    assert float(run.data.params["features.health.constant_share"]) >= 0.0
    assert len(client.get_metric_history(run.info.run_id, "val_data_loss")) == info["epochs_run"]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(info["epochs_run"]))
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == info["epochs_run"]
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["val/loss"] == pytest.approx(metrics["val"]["loss"])
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == FIGURES
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert len(models) == 1, "log_keras_model logs one pyfunc model per training run"
    versions = client.search_model_versions("name = 'pet-classifier'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    reports = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"metrics.json", "predictions_test.csv"} <= reports

    features = root / "data" / "features" / "train.npy"
    stamp = features.stat().st_mtime_ns
    out = dvc(root, env, "exp", "run", "-S", "train.epochs=2")
    assert "Running stage 'featurize'" not in out, out[-3000:]
    assert "Running stage 'train'" in out and "Running stage 'plot'" in out
    assert features.stat().st_mtime_ns == stamp, "featurize must not re-run"
    runs = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    second = runs[1]
    assert second.data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(second.info.run_id, "loss")) <= 2
    assert "test/accuracy" in second.data.metrics
    assert json.loads((root / "models" / "train.json").read_text())["mlflow_run_id"] == (
        second.info.run_id
    )
    # `dvc exp show` reads the experiment's metrics back (they are cached outputs).
    experiments = [
        rev
        for entry in json.loads(dvc(root, env, "exp", "show", "--json"))
        for group in entry.get("experiments") or []
        for rev in group["revs"]
    ]
    assert len(experiments) == 1
    exp_metrics = experiments[0]["data"]["metrics"]["reports/metrics.json"]
    assert "error" not in exp_metrics, exp_metrics
    assert exp_metrics["data"]["test"]["accuracy"] == pytest.approx(
        second.data.metrics["test/accuracy"]
    )
