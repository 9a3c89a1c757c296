"""MLflow tracking: store location, run contents, the pyfunc model, a real tracking server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import (
    random_weights,
    serve_mlflow,
    tiny_image_classifier,
    tiny_model_params,
    write_png,
)

from petscan.params.schema import section
from petscan.tracking import model_logging, provenance, registry, runs, store

MODEL_PARAMS = tiny_model_params()
WEIGHTS = random_weights(sha256="ab" * 32)


MANIFESTS = {
    "train": "path,class,label,patient\na.png,x,0,p1\nc.png,y,1,p3\n",
    "val": "path,class,label,patient\nb.png,y,1,p2\n",
    "test": "path,class,label,patient\nd.png,x,0,p4\n",
}


@pytest.fixture
def manifests(tmp_path):
    """A split folder with train.csv, val.csv and test.csv (what run_tags hashes)."""
    split_dir = tmp_path / "data" / "split"
    split_dir.mkdir(parents=True)
    for split, body in MANIFESTS.items():
        (split_dir / f"{split}.csv").write_text(body)
    return split_dir


def mlflow_section(**values):
    """An `mlflow` section: the defaults with `values` changed, checked by the schema."""
    return section("mlflow", values)


def tiny_model(seed: int = 0) -> keras.Model:
    model = tiny_image_classifier(seed)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def write_pngs(folder: Path, count: int = 4) -> list[Path]:
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        size = (40 + 8 * i, 48)  # not the model's size: the pyfunc must resize
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        paths.append(write_png(folder / f"img_{i}.png", pixels))
    return paths


def fit_logged(model: keras.Model, run_id: str, epochs: int = 4) -> keras.callbacks.History:
    """Fit with the epoch logger (a Keras callback of the training package) into `run_id`."""
    from petscan.training.callbacks import MlflowEpochLogger

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 24)
    schedule = keras.callbacks.LearningRateScheduler(lambda e: 0.01 if e < 2 else 0.001)
    return model.fit(
        x,
        y,
        validation_data=(x[:8], y[:8]),
        epochs=epochs,
        batch_size=8,
        verbose=0,
        callbacks=[MlflowEpochLogger(run_id), schedule],  # logger first on purpose
    )


# --------------------------------------------------------------------------- store


def test_tracking_uri_env_beats_param_beats_default(tmp_path, monkeypatch):
    monkeypatch.delenv("PETSCAN_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "real-repo"))
    expected = f"sqlite:///{(tmp_path / 'real-repo').resolve()}/mlruns/mlflow.db"
    assert store.resolve_tracking_uri(mlflow_section(tracking_uri=None)) == expected
    assert store.resolve_tracking_uri(mlflow_section(tracking_uri="http://param:5000")) == (
        "http://param:5000"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert store.resolve_tracking_uri(mlflow_section(tracking_uri="http://param:5000")) == (
        "http://env:5000"
    )


def test_configure_anchors_store_and_artifacts_at_root(mlflow_store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "some" / "other" / "cwd"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # the artifact location must not follow the cwd
    experiment_id = store.configure(mlflow_section(experiment="pet classification"))
    assert mlflow.get_tracking_uri() == f"sqlite:///{mlflow_store.resolve()}/mlruns/mlflow.db"
    assert (mlflow_store / "mlruns" / "mlflow.db").is_file()
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.name == "pet classification"
    assert (
        experiment.artifact_location
        == (mlflow_store.resolve() / "mlruns" / "artifacts" / "pet-classification").as_uri()
    )
    assert store.configure(mlflow_section(experiment="pet classification")) == experiment_id
    assert not (elsewhere / "mlruns").exists()


# --------------------------------------------------------------------------- run contents


def test_run_tags_hash_git_and_weights(mlflow_store, manifests, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-gamma")
    tags = provenance.run_tags(manifests, WEIGHTS)
    # train, val, test in that order; the tuning runs use the same definition
    expected_hash = hashlib.sha256(
        (MANIFESTS["train"] + MANIFESTS["val"] + MANIFESTS["test"]).encode()
    ).hexdigest()
    assert tags["data_manifest_sha256"] == expected_hash == provenance.data_hash(manifests)
    assert tags["git_commit"] == "unknown"  # PETSCAN_ROOT is not a git repository
    assert tags["dvc_exp_name"] == "lucid-gamma"
    assert tags["random_init"] == "true"
    assert tags["weights_source"] == "random"
    assert tags["weights_sha256"] == "ab" * 32
    assert tags["weights_label"] == "RANDOM-INIT backbone (not RadImageNet)"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert provenance.run_tags(manifests, None)["dvc_exp_name"] == "workspace"
    with pytest.raises(FileNotFoundError, match="dvc repro split"):
        provenance.run_tags(mlflow_store / "missing", WEIGHTS)


def test_run_name_is_the_dvc_experiment_or_the_commit(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = {"git_commit": "4ae41df0123456789", "git_dirty": "false"}
    assert provenance.run_name("train", tags) == "train-4ae41df"
    assert provenance.run_name("train", {**tags, "git_dirty": "true"}) == "train-4ae41df-dirty"
    assert provenance.run_name("train", {"git_commit": "unknown"}) == "train-nogit"
    monkeypatch.setenv("DVC_EXP_NAME", "gamma-1")
    assert provenance.run_name("train", tags) == "gamma-1"


def test_split_manifests_are_logged_as_datasets_with_contexts(mlflow_store, manifests):
    with runs.start_training_run(mlflow_section(experiment="e"), {}, {}) as run:
        provenance.log_datasets(run.info.run_id, manifests, manifests.parent.parent)
    inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    found = {}
    for entry in inputs:
        context = {t.key: t.value for t in entry.tags}["mlflow.data.context"]
        found[context] = entry.dataset
    assert set(found) == {"train", "validation", "test"}
    for split, context in (("train", "train"), ("val", "validation"), ("test", "test")):
        dataset = found[context]
        assert dataset.name == split
        assert dataset.digest == hashlib.sha256(MANIFESTS[split].encode()).hexdigest()[:32]
        assert f"data/split/{split}.csv" in dataset.source
        rows = MANIFESTS[split].count("\n") - 1
        assert f'"num_rows": {rows}' in dataset.profile


def test_version_description_before_and_after_evaluation():
    tags = {
        "random_init": "true",
        "backbone": "tiny",
        "weights_label": "RANDOM-INIT backbone (not RadImageNet)",
        "weights_source": "random",
        "weights_sha256": "ab" * 32,
        "data_manifest_sha256": "cd" * 32,
        "git_commit": "1234567",
        "git_dirty": "false",
        "dvc_exp_name": "workspace",
    }
    before = registry.version_description(tags)
    assert before.startswith("**WARNING: RANDOM-INIT BACKBONE")
    assert "Backbone: tiny, weights: RANDOM-INIT backbone (not RadImageNet)" in before
    assert f"split manifests sha256 {'cd' * 32}" in before
    assert "not evaluated yet" in before
    test = {"n": 63, "n_groups": 31, "ece": 0.0734, "ece_ci_low": 0.05, "ece_ci_high": 0.2}
    test.update({"accuracy": 0.349206, "accuracy_ci_low": 0.185, "accuracy_ci_high": 0.5217})
    real = {**tags, "random_init": "false", "weights_label": "RadImageNet"}
    after = registry.version_description(real, {"test": test})
    assert "WARNING" not in after
    assert "Test (63 images of 31 patients; 95% bootstrap intervals)" in after
    assert "accuracy 0.349 [0.185, 0.522]" in after and "ECE 0.073 [0.050, 0.200]" in after
    assert "macro F1 n/a [n/a, n/a]" in after  # missing numbers are said to be missing


def test_git_state_reads_head_and_dirty_flag(tmp_path):
    repo = tmp_path / "g"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    (repo / "f.txt").write_text("1")
    for cmd in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert provenance.git_state(repo) == (head, "false")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(["git", "add", "dvc.lock"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "lock"], cwd=repo, check=True, env=env)
    head = provenance.git_state(repo)[0]
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # DVC writes it mid-run
    assert provenance.git_state(repo) == (head, "false")
    (repo / "f.txt").write_text("2")
    assert provenance.git_state(repo) == (head, "true")


def test_param_values_are_readable_and_truncated():
    flat = runs.flat_params(
        {
            "train": {"loss": {"gamma": 2.0, "alpha": [0.5, 0.3, 0.2]}, "x": None, "on": True},
            "long": "y" * 7000,
        }
    )
    assert flat["train.loss.gamma"] == "2.0"
    assert flat["train.loss.alpha"] == "[0.5, 0.3, 0.2]"
    assert flat["train.x"] == "null" and flat["train.on"] == "true"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[truncated]")


def test_training_run_logs_params_tags_and_epoch_metrics(mlflow_store, manifests):
    params = {"train": {"loss": {"gamma": 2.0, "alpha": [0.5, 0.3, 0.2]}, "epochs": 4}}
    tags = provenance.run_tags(manifests, WEIGHTS)
    model = tiny_model()
    with runs.start_training_run(
        mlflow_section(experiment="e"), params, tags, run_name="r1"
    ) as run:
        history = fit_logged(model, run.info.run_id)
        run_id = run.info.run_id
    client = mlflow.MlflowClient()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "r1"
    assert logged.data.params["train.loss.gamma"] == "2.0"
    assert logged.data.params["train.loss.alpha"] == "[0.5, 0.3, 0.2]"
    assert logged.data.params["train.epochs"] == "4"
    assert logged.data.tags["random_init"] == "true"
    assert "RANDOM-INIT BACKBONE" in logged.data.tags["mlflow.note.content"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        points = client.get_metric_history(run_id, key)
        assert [p.step for p in points] == [0, 1, 2, 3]
        np.testing.assert_allclose([p.value for p in points], history.history[key], rtol=1e-6)
    lr = client.get_metric_history(run_id, "learning_rate")
    assert [p.step for p in lr] == [0, 1, 2, 3]
    np.testing.assert_allclose([p.value for p in lr], [0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_urls_with_credentials_are_recorded_redacted(mlflow_store, manifests, tmp_path):
    params = {
        "mlflow": {"tracking_uri": "https://user:S3CRET@mlflow.example/", "experiment": "e"},
        "weights": {
            "sources": [
                {"type": "url", "url": "https://h/w.h5?sig=S3CRET"},
                {"type": "url", "url": "https://h/x;jsessionid=S3CRET/w.h5"},
            ]
        },
    }
    weights = dataclasses.replace(WEIGHTS, weights_source="url:https://tok-S3CRET@h/w.h5")
    tags = provenance.run_tags(manifests, weights)
    assert tags["weights_source"] == "url:https://***@h/w.h5"
    weights = dataclasses.replace(WEIGHTS, weights_source="url:https://h/d;jsessionid=S3CRET/w.h5")
    assert provenance.run_tags(manifests, weights)["weights_source"] == "url:https://h/d;***/w.h5"
    with runs.start_training_run(mlflow_section(experiment="e"), params, tags) as run:
        pass
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.params["mlflow.tracking_uri"] == "https://user:***@mlflow.example/"
    assert logged.data.params["weights.sources"] == (
        '[{"type": "url", "url": "https://h/w.h5?***"}, '
        '{"type": "url", "url": "https://h/x;***/w.h5"}]'
    )
    recorded = mlflow.artifacts.load_text(f"{logged.info.artifact_uri}/params.json")
    everything = [recorded, str(logged.data.params), str(logged.data.tags)]
    assert "mlflow.example" in recorded and not any("S3CRET" in t for t in everything)


def test_resumed_run_logs_into_the_training_run_found_by_model_hash(mlflow_store, tmp_path):
    params = mlflow_section(experiment="e")
    for sha in ("aa", "bb", "aa"):  # the newest training of a model wins
        with runs.start_training_run(params, {"a": 1}, {"random_init": "false"}) as run:
            mlflow.set_tag("model_sha256", sha)
            run_id = run.info.run_id
    assert runs.training_run_id("aa", params) == run_id
    with pytest.warns(UserWarning, match="no MLflow training run"):
        assert runs.training_run_id("cc", params) is None
    assert runs.training_run_id(None, params) is None
    with runs.resumed_run(runs.training_run_id("aa", params), params) as again:
        assert again.info.run_id == run_id
        mlflow.log_metric("test_accuracy", 0.75)
    with runs.resumed_run(None) as nothing:
        assert nothing is None
    # the params evaluate reads; a changed value (an evaluate-only experiment) is a tag
    assert runs.log_stage_params(run_id, {"evaluate": {"ece_bins": 10}}) == {}
    changed = runs.log_stage_params(run_id, {"evaluate": {"ece_bins": 15, "seed": 1}})
    assert changed == {"evaluate.ece_bins": "15"}
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.data.params["evaluate.ece_bins"] == "10"
    assert logged.data.params["evaluate.seed"] == "1"
    assert logged.data.tags["evaluate.ece_bins"] == "15"
    assert logged.data.metrics["test_accuracy"] == 0.75
    assert logged.info.status == "FINISHED"
    assert "RANDOM-INIT" not in logged.data.tags.get("mlflow.note.content", "")


def test_training_run_is_the_one_way_a_later_stage_logs(mlflow_store):
    params = mlflow_section(experiment="e")
    with runs.start_training_run(params, {"train": {"seed": 1}}, {}) as run:
        mlflow.set_tag("model_sha256", "ab")
    stage = {"explain": {"method": "gradcam", "seed": 1}, "train": {"seed": 1}}
    with runs.training_run("ab", params, stage) as again:
        assert again.info.run_id == run.info.run_id
        mlflow.log_metric("explain/images", 3)
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.params["explain.method"] == "gradcam"
    assert logged.data.params["train.seed"] == "1"
    assert logged.data.metrics["explain/images"] == 3
    assert logged.info.status == "FINISHED"
    warns = pytest.warns(UserWarning, match="no MLflow training run")
    with warns, runs.training_run("cd", params, stage) as nothing:
        assert nothing is None
    with runs.training_run(None, params, stage) as nothing:
        assert nothing is None


# --------------------------------------------------------------------------- the pyfunc model


def test_pyfunc_predicts_like_keras_and_is_registered(mlflow_store, tmp_path, manifests):
    model = tiny_model(seed=3)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    images = write_pngs(tmp_path / "png")
    with runs.start_training_run(mlflow_section(experiment="e"), {}, {}) as run:
        info = model_logging.log_keras_model(
            model_path,
            mlflow_section(registered_model="pet-test"),
            CLASSES,
            MODEL_PARAMS,
            input_example=[str(images[0])],
        )
    assert info.run_id == run.info.run_id
    assert info.signature.inputs.input_names() == ["path", "image"]
    assert info.signature.outputs.input_names() == [*CLASSES, "predicted_class", "error"]

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    out = loaded.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    from petscan.data.images import load_resized

    x = np.stack([load_resized(p, (32, 32), "stretch") for p in images])
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(out[CLASSES].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(out["predicted_class"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
    # arrays go through the unwrapped model (the logged signature describes paths)
    inner = loaded.unwrap_python_model()
    np.testing.assert_allclose(inner.predict(None, x)[CLASSES].to_numpy(), expected, rtol=1e-5)
    assert loaded.model_config["class_names"] == CLASSES

    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='pet-test'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    # described, tagged and aliased by train; evaluate adds the test metrics
    mlflow_params = mlflow_section(registered_model="pet-test", alias="candidate")
    tags = {**provenance.run_tags(manifests, WEIGHTS), "model_sha256": "ef" * 32}
    assert registry.register_version(info, mlflow_params, tags) == "1"
    version = client.get_model_version_by_alias("pet-test", "candidate")
    assert str(version.version) == "1" and "RANDOM-INIT BACKBONE" in version.description
    assert version.tags["random_init"] == "true" and version.tags["model_sha256"] == "ef" * 32
    assert version.tags["data_manifest_sha256"] == provenance.data_hash(manifests)
    client.set_tag(run.info.run_id, "random_init", "true")  # what train's run carries
    test = {"n": 4, "accuracy": 0.5, "accuracy_ci_low": 0.25, "accuracy_ci_high": 0.75}
    assert registry.describe_model_version(run.info.run_id, mlflow_params, {"test": test}) == ["1"]
    version = client.get_model_version("pet-test", "1")
    assert "Test (4 images; 95% bootstrap intervals): accuracy 0.500 [0.250, 0.750]" in (
        version.description
    )
    assert version.tags["test_accuracy"] == "0.500 [0.250, 0.750]"
    # `petscan predict` by alias
    from petscan.serving import predict

    out_csv = tmp_path / "by_alias.csv"
    argv = [str(images[2]), "--model-uri", "models:/pet-test@candidate", "--csv", str(out_csv)]
    assert predict.main([*argv, "--params", str(tmp_path / "absent.yaml")]) == 0
    np.testing.assert_allclose(
        pd.read_csv(out_csv)[CLASSES].to_numpy(), expected[2:3], rtol=1e-5, atol=1e-6
    )
    by_name = mlflow.pyfunc.load_model("models:/pet-test@candidate")
    np.testing.assert_allclose(
        by_name.predict(pd.DataFrame({"path": [str(images[1])]}))[CLASSES].to_numpy(),
        expected[1:2],
        rtol=1e-5,
    )


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def mlflow_server(tmp_path):
    with serve_mlflow(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", tmp_path
    ) as url:
        yield url, tmp_path / "server-artifacts"


def test_logging_to_a_real_tracking_server(mlflow_store, manifests, mlflow_server, monkeypatch):
    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    tags = provenance.run_tags(manifests, WEIGHTS)
    with runs.start_training_run(
        mlflow_section(experiment="served"), {"train": {"epochs": 2}}, tags
    ) as run:
        history = fit_logged(tiny_model(), run.info.run_id, epochs=2)
        run_id = run.info.run_id
    client = mlflow.MlflowClient(url)
    logged = client.get_run(run_id)
    assert logged.data.params["train.epochs"] == "2"
    assert logged.data.tags["random_init"] == "true"
    losses = [p.value for p in client.get_metric_history(run_id, "loss")]
    np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-6)
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert [f.path for f in client.list_artifacts(run_id)] == ["params.json"]
    assert list(artifacts.rglob("params.json")), "the server stored no artifact"
    assert not (mlflow_store / "mlruns").exists(), "a server run must not touch the local store"
