"""The whole DVC pipeline, tiny, in a temporary copy of the repository.

`dvc repro` runs split -> fetch_weights -> featurize -> train -> evaluate, explain -> plot on a
tiny synthetic data set (tiny backbone, 32 x 32 images, random-init weights); the MLflow
run is then read back, also through the REST API of a real `mlflow server`. Two queued
experiments (`dvc exp run --queue -S ...`) must each differ from the baseline by one param,
re-run train, evaluate and plot but not featurize, and show in the README's `dvc exp show`
command within 160 columns. Then the finished pipeline goes to a DVC remote and into a
fresh clone, where nothing is recomputed and a forced re-run changes no byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FIGURES = {
    "training_curves.png",
    "explanations_test.png",
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


def tiny_repo(root: Path, adjust: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    """A copy of the repository at `root` with `tiny_params` (then `adjust(params)`), its
    demo data generated, committed to git and DVC-initialised; returns (root, env)."""
    for name in repo_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = tiny_params(root / "params.yaml")
    if adjust is not None:
        adjust(params)
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
    from petscan.demo.generate import generate

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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    return tiny_repo(tmp_path_factory.mktemp("pipeline") / "repo")


def dvc(root: Path, env: dict, *args: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`dvc {' '.join(args)}` failed:\n{output[-6000:]}"
    return output


def git(root: Path, env: dict, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"`git {' '.join(args)}` failed:\n{result.stderr}"
    return result.stdout


def leaves(tree: dict, prefix: str = "") -> dict:
    """`{"test": {"accuracy": x}}` -> `{"test.accuracy": x}` (how `dvc exp show` names columns)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(leaves(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


def rest(url: str, path: str, body: dict | None = None) -> dict:
    """GET (or POST `body`) an MLflow REST endpoint; the JSON reply."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


# The README's comparison command: it must fit a 160-column terminal.
EXP_SHOW = (
    r"dvc exp show --only-changed --keep 'test\.(accuracy|f1_macro|roc_auc_macro|ece)$' "
    r"--drop 'Created|State|Executor|.*/|val\.|.*_(low|high)$|test\.balanced'"
)
COMPACT = {
    "random_init",
    "weights_label",
    *(
        f"{split}.{name}{bound}"
        for split in ("val", "test")
        for name in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ece")
        for bound in ("", "_low", "_high")
    ),
    "val.single_class_predictions",
    "test.single_class_predictions",
    "collapse.collapsed",
}


@pytest.mark.slow
def test_the_demo_backbone_label_travels_to_every_output(tmp_path):
    """`model.backbone: auto` without the RadImageNet file: the shipped pet_demo backbone,
    and its label in weights.json, train.json, both metrics files, the MLflow run, the
    registered version and the console."""
    import mlflow

    from petscan.handoff.records import DEMO_LABEL

    def demo(params: dict) -> None:
        params["model"].update(backbone="auto", input_size=None, preprocessing=None)
        params["weights"]["sources"] = [{"type": "file", "path": "absent/RadImageNet.h5"}]

    root, env = tiny_repo(tmp_path / "repo", demo)
    out = dvc(root, env, "repro")
    assert f"WARNING: features computed with a {DEMO_LABEL}" in out
    weights = json.loads((root / "models" / "backbone" / "weights.json").read_text())
    assert weights["backbone"] == "pet_demo" and weights["input_size"] == [256, 160]
    records = [
        weights,
        json.loads((root / "models" / "train.json").read_text()),
        json.loads((root / "reports" / "metrics.json").read_text()),
        json.loads((root / "reports" / "metrics_full.json").read_text()),
        json.loads((root / "reports" / "explain" / "metrics.json").read_text()),
    ]
    for record in records:
        assert record["weights_label"] == DEMO_LABEL and record["random_init"] is False
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["weights_label"] == DEMO_LABEL
    assert run.data.tags["backbone"] == "pet_demo"
    version = client.get_model_version_by_alias("pet-classifier", "candidate")
    assert version.description.startswith(f"**WARNING: {DEMO_LABEL.upper()}.**")
    assert version.tags["weights_label"] == DEMO_LABEL


@pytest.mark.slow
def test_dvc_repro_then_queued_experiments_log_to_mlflow(workspace, tmp_path):
    import mlflow
    from conftest import serve_mlflow

    root, env = workspace
    dvc(root, env, "repro")

    info = json.loads((root / "models" / "train.json").read_text())
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert info["random_init"] is True and metrics["random_init"] is True
    assert {p.name for p in (root / "reports" / "figures").iterdir()} == FIGURES
    assert 1 <= info["epochs_run"] <= 3 and 0 <= info["best_epoch"] < info["epochs_run"]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # no run-dependent value in a DVC output: the model's sha256 finds the MLflow run
    assert "mlflow_run_id" not in info
    model_bytes = (root / "models" / "model.keras").read_bytes()
    assert info["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    # the compact DVC metrics file; the full detail is a plain output
    assert set(leaves(metrics)) == COMPACT
    full = json.loads((root / "reports" / "metrics_full.json").read_text())
    assert full["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert full["test"]["ece_ci_high"] == metrics["test"]["ece_high"]
    assert "recall/Breast cancer_ci_low" in full["test"]

    shown = json.loads(dvc(root, env, "metrics", "show", "--json"))
    workspace_metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert workspace_metrics["test"]["accuracy"] == metrics["test"]["accuracy"]
    plots = json.loads(dvc(root, env, "plots", "show", "--json"))["data"]
    assert {"loss", "accuracy", "confusion_test", "confusion_val"} <= set(plots)
    assert {f"reports/figures/{name}" for name in FIGURES} <= set(plots)
    for plot, y_title in (
        ("loss", "data loss (train.loss)"),
        ("accuracy", "accuracy, macro ROC AUC"),
        ("models/history.csv", "learning rate"),
        ("confusion_test", "predicted class"),
    ):
        spec = json.dumps(plots[plot][0]["content"])
        assert f'"title": "{y_title}"' in spec, (plot, spec[:2000])
        assert '"title": "y"' not in spec

    # both URIs: an earlier test's `tracking.use_store` may have left the registry elsewhere
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.model_sha256 = '{info['model_sha256']}'",
    )
    commit = git(root, env, "rev-parse", "HEAD").strip()
    assert run.info.run_name == f"train-{commit[:7]}"
    assert run.data.tags["git_dirty"] == "false"  # DVC rewriting dvc.lock is not a code change
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["model.backbone"] == "tiny"
    assert run.data.params["featurize.augmentation.rotation"] == "0.2"  # train reads it
    assert run.data.params["evaluate.bootstrap_resamples"] == "50"  # evaluate reads it
    assert run.data.params["plot.dpi"] == "130"  # plot reads it
    assert run.data.tags["random_init"] == "true"
    assert run.data.tags["collapse"] == str(info["collapse"]["collapsed"]).lower()
    assert metrics["collapse"]["collapsed"] == info["collapse"]["collapsed"]
    assert float(run.data.params["features.health.constant_share"]) >= 0.0
    assert len(client.get_metric_history(run.info.run_id, "val_data_loss")) == info["epochs_run"]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(info["epochs_run"]))
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == info["epochs_run"]
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["val/loss"] == pytest.approx(full["val"]["loss"])
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == FIGURES
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert len(models) == 1, "log_keras_model logs one pyfunc model per training run"
    reports = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"metrics.json", "metrics_full.json", "predictions_test.csv"} <= reports
    # the explain stage: localization on the generator's lesions, logged into the same run
    explained = json.loads((root / "reports" / "explain" / "metrics_full.json").read_text())
    assert explained["skipped"] is None and explained["localization"]["images"] > 0
    from petscan.evaluation.localization import HEADLINE

    headline = json.loads((root / "reports" / "explain" / "metrics.json").read_text())
    assert set(headline["localization"]) == set(HEADLINE)
    assert run.data.metrics["explain/model/pointing_game"] == pytest.approx(
        explained["localization"]["model/pointing_game"]
    )
    explain_files = client.list_artifacts(run.info.run_id, "reports/explain")
    assert {Path(a.path).name for a in explain_files} == {"metrics_full.json", "localization.csv"}

    # What the MLflow UI shows, read through the REST API of a real server on this store
    with serve_mlflow(
        f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", root / "mlruns" / "artifacts", tmp_path
    ) as url:
        found = rest(url, "runs/search", {"experiment_ids": [run.info.experiment_id]})["runs"]
        inputs = next(r for r in found if r["info"]["run_id"] == run.info.run_id)["inputs"]
        datasets = {
            next(t["value"] for t in d["tags"] if t["key"] == "mlflow.data.context"): d["dataset"]
            for d in inputs["dataset_inputs"]
        }
        assert set(datasets) == {"train", "validation", "test"}
        for split, context in (("train", "train"), ("val", "validation"), ("test", "test")):
            manifest = (root / "data" / "split" / f"{split}.csv").read_bytes()
            assert datasets[context]["name"] == split
            assert datasets[context]["digest"] == hashlib.sha256(manifest).hexdigest()[:32]
        version = rest(url, "registered-models/alias?name=pet-classifier&alias=candidate")[
            "model_version"
        ]
        assert version["run_id"] == run.info.run_id
        description = version["description"]
        assert description.startswith("**WARNING: RANDOM-INIT BACKBONE")
        assert run.data.tags["data_manifest_sha256"] in description
        test = full["test"]
        assert (
            f"accuracy {test['accuracy']:.3f} [{test['accuracy_ci_low']:.3f}, "
            f"{test['accuracy_ci_high']:.3f}]" in description
        )
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags["random_init"] == "true" and tags["model_sha256"] == info["model_sha256"]
        assert tags["test_roc_auc_macro"].startswith(f"{test['roc_auc_macro']:.3f} [")

    # The baseline run is committed (its dvc.lock), as after `make run` on a clone; then
    # queued experiments, one param each: the workspace's params.yaml is left as it is
    git(root, env, "add", "-A")
    git(root, env, "commit", "-qm", "baseline run")
    params_before = (root / "params.yaml").read_bytes()
    features = root / "data" / "features" / "train.npy"
    stamp = features.stat().st_mtime_ns
    for name, change in (("gamma-1", "train.loss.gamma=1.0"), ("epochs-2", "train.epochs=2")):
        queue = ("exp", "run", "--queue", "--copy-paths", "data/raw")
        dvc(root, env, *queue, "-n", name, "-S", change)
    assert (root / "params.yaml").read_bytes() == params_before
    out = dvc(root, env, "exp", "run", "--run-all")
    assert "Running stage 'featurize'" not in out, out[-3000:]
    assert features.stat().st_mtime_ns == stamp, "featurize must not re-run"
    assert (root / "params.yaml").read_bytes() == params_before

    shown = json.loads(dvc(root, env, "exp", "show", "--json", "--no-fetch"))
    (baseline,) = [entry for entry in shown if entry.get("experiments")]  # the commit
    base_params = leaves(baseline["data"]["params"]["params.yaml"]["data"])
    experiments = {
        rev["name"]: rev["data"] for group in baseline["experiments"] for rev in group["revs"]
    }
    assert set(experiments) == {"gamma-1", "epochs-2"}
    expected_change = {"gamma-1": ("train.loss.gamma", 1.0), "epochs-2": ("train.epochs", 2)}
    for name, data in experiments.items():
        params = leaves(data["params"]["params.yaml"]["data"])
        changed = {k: v for k, v in params.items() if base_params.get(k) != v}
        assert changed == dict([expected_change[name]]), (name, changed)
        exp_metrics = data["metrics"]["reports/metrics.json"]
        assert "error" not in exp_metrics, exp_metrics
        assert set(leaves(exp_metrics["data"])) == COMPACT
        # the split summary stays a DVC metric; all metric columns: a few dozen, not 346
        columns = sum(len(leaves(m["data"])) for m in data["metrics"].values())
        assert columns <= len(COMPACT) + 30 + len(HEADLINE) + 2, columns
        (exp_run,) = client.search_runs(
            [run.info.experiment_id], filter_string=f"attributes.run_name = '{name}'"
        )
        assert exp_run.data.tags["dvc_exp_name"] == name
        assert exp_run.data.metrics["test/accuracy"] == pytest.approx(
            exp_metrics["data"]["test"]["accuracy"]
        )
        assert {d.dataset.name for d in exp_run.inputs.dataset_inputs} == {"train", "val", "test"}
    assert len(client.get_metric_history(exp_run.info.run_id, "loss")) <= 3

    # The README's command, as a user's 160-column terminal shows it
    readme = (REPO / "README.md").read_text()
    assert EXP_SHOW in readme, "README.md must show the tested `dvc exp show` command"
    table = dvc(root, {**env, "COLUMNS": "160"}, *shlex.split(EXP_SHOW)[1:])
    lines = table.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 160, table
    assert "…" not in table, table  # no column cut off
    header = next(line for line in lines if "Experiment" in line).split()
    for column in ("test.accuracy", "test.f1_macro", "test.roc_auc_macro", "test.ece"):
        assert column in header, table
    assert {"train.loss.gamma", "train.epochs"} <= set(header), table
    for name in experiments:
        assert any(f"[{name}]" in line for line in lines), table


@pytest.mark.slow
def test_pipeline_pushed_to_a_remote_is_pulled_into_a_fresh_clone_without_recomputing(
    workspace, tmp_path
):
    """The team recipe: `dvc add data/raw`, a shared DVC remote, `git clone` + `dvc pull`;
    then `dvc repro` recomputes nothing, and a forced re-run of every stage with the same
    inputs gives byte-identical outputs (dvc.lock unchanged, `git status` clean)."""
    root, env = workspace
    dvc(root, env, "repro")
    dvc(root, env, "add", "data/raw")
    remote = tmp_path / "remote"
    dvc(root, env, "remote", "add", "-d", "shared", str(remote))
    git(root, env, "add", "-A")
    git(root, env, "commit", "-qm", "pipeline run, data/raw tracked by DVC, a shared remote")
    dvc(root, env, "push")

    clone = tmp_path / "clone"
    git(tmp_path, env, "clone", "-q", str(root), str(clone))
    clone_env = {**env, "PYTHONPATH": str(clone / "src"), "PETSCAN_ROOT": str(clone)}
    dvc(clone, clone_env, "pull")
    assert "Data and pipelines are up to date" in dvc(clone, clone_env, "status")
    out = dvc(clone, clone_env, "repro")
    assert "Running stage" not in out, out[-3000:]
    assert (clone / "models" / "model.keras").read_bytes() == (
        root / "models" / "model.keras"
    ).read_bytes()

    lock = (clone / "dvc.lock").read_text()
    out = dvc(clone, clone_env, "repro", "--force")  # every stage again, same inputs
    assert "Running stage 'train'" in out and "Running stage 'fetch_weights'" in out
    assert (clone / "dvc.lock").read_text() == lock, "identical inputs must give identical outputs"
    assert git(clone, clone_env, "status", "--porcelain") == ""
