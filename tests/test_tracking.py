"""MLflow tracking: store location, run contents, the pyfunc model, a real tracking server."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import random_weights_meta, tiny_image_classifier, write_png

from petscan import tracking

MODEL_PARAMS = {"input_size": [32, 32], "resize": "stretch", "backbone": "tiny"}
WEIGHTS_META = random_weights_meta(sha256="ab" * 32)


@pytest.fixture
def manifests(tmp_path):
    paths = []
    for split, body in (("train", "path,class\na.png,x\n"), ("val", "path,class\nb.png,y\n")):
        path = tmp_path / f"{split}.csv"
        path.write_text(body)
        paths.append(path)
    return paths


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
        callbacks=[tracking.MlflowEpochLogger(run_id), schedule],  # logger first on purpose
    )


# --------------------------------------------------------------------------- store


def test_tracking_uri_env_beats_param_beats_default(tmp_path, monkeypatch):
    monkeypatch.delenv("PETSCAN_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "real-repo"))
    expected = f"sqlite:///{(tmp_path / 'real-repo').resolve()}/mlruns/mlflow.db"
    assert tracking.resolve_tracking_uri({"tracking_uri": None}) == expected
    assert tracking.resolve_tracking_uri({"tracking_uri": "http://param:5000"}) == (
        "http://param:5000"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri({"tracking_uri": "http://param:5000"}) == (
        "http://env:5000"
    )


def test_configure_anchors_store_and_artifacts_at_root(mlflow_store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "some" / "other" / "cwd"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # the artifact location must not follow the cwd
    experiment_id = tracking.configure({"experiment": "pet classification"})
    assert mlflow.get_tracking_uri() == f"sqlite:///{mlflow_store.resolve()}/mlruns/mlflow.db"
    assert (mlflow_store / "mlruns" / "mlflow.db").is_file()
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.name == "pet classification"
    assert (
        experiment.artifact_location
        == (mlflow_store.resolve() / "mlruns" / "artifacts" / "pet-classification").as_uri()
    )
    assert tracking.configure({"experiment": "pet classification"}) == experiment_id
    assert not (elsewhere / "mlruns").exists()


# --------------------------------------------------------------------------- run contents


def test_run_tags_hash_git_and_weights(mlflow_store, manifests, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-gamma")
    tags = tracking.run_tags(manifests, WEIGHTS_META)
    expected_hash = hashlib.sha256(b"path,class\na.png,x\n" + b"path,class\nb.png,y\n").hexdigest()
    assert tags["data_manifest_sha256"] == expected_hash
    assert tags["git_commit"] == "unknown"  # PETSCAN_ROOT is not a git repository
    assert tags["dvc_exp_name"] == "lucid-gamma"
    assert tags["random_init"] == "true"
    assert tags["weights_source"] == "random"
    assert tags["weights_sha256"] == "ab" * 32
    assert tags["backbone_label"] == "RANDOM-INIT backbone (not RadImageNet)"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.run_tags(manifests, {"random_init": False})["dvc_exp_name"] == "workspace"
    with pytest.raises(FileNotFoundError, match="dvc repro split"):
        tracking.run_tags([mlflow_store / "missing.csv"], WEIGHTS_META)


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
    assert tracking.git_state(repo) == (head, "false")
    (repo / "f.txt").write_text("2")
    assert tracking.git_state(repo) == (head, "true")


def test_param_values_are_readable_and_truncated():
    flat = tracking.flat_params(
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
    tags = tracking.run_tags(manifests, WEIGHTS_META)
    model = tiny_model()
    with tracking.start_training_run({"experiment": "e"}, params, tags, run_name="r1") as run:
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


def test_resumed_run_logs_into_the_training_run(mlflow_store, tmp_path):
    with tracking.start_training_run(
        {"experiment": "e"}, {"a": 1}, {"random_init": "false"}
    ) as run:
        run_id = run.info.run_id
    tracking.write_run_id(tmp_path / "run.json", run_id)
    assert tracking.read_run_id(tmp_path / "run.json") == run_id
    assert tracking.read_run_id(tmp_path / "absent.json") is None
    with tracking.resumed_run(tracking.read_run_id(tmp_path / "run.json"), {}) as again:
        assert again.info.run_id == run_id
        mlflow.log_metric("test_accuracy", 0.75)
    with tracking.resumed_run(None) as nothing:
        assert nothing is None
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.data.metrics["test_accuracy"] == 0.75
    assert logged.info.status == "FINISHED"
    assert "RANDOM-INIT" not in logged.data.tags.get("mlflow.note.content", "")


# --------------------------------------------------------------------------- the pyfunc model


def test_pyfunc_predicts_like_keras_and_is_registered(mlflow_store, tmp_path):
    model = tiny_model(seed=3)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    images = write_pngs(tmp_path / "png")
    with tracking.start_training_run({"experiment": "e"}, {}, {}) as run:
        info = tracking.log_keras_model(
            model_path,
            {"registered_model": "pet-test"},
            CLASSES,
            MODEL_PARAMS,
            input_example=[str(images[0])],
        )
    assert info.run_id == run.info.run_id
    assert info.signature.inputs.input_names() == ["path", "image"]
    assert info.signature.outputs.input_names() == [*CLASSES, "predicted_class", "error"]

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    out = loaded.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    from petscan.images import load_resized

    x = np.stack([load_resized(p, (32, 32), "stretch") for p in images])
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(out[CLASSES].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(out["predicted_class"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
    # arrays go through the unwrapped model (the logged signature describes paths)
    inner = loaded.unwrap_python_model()
    np.testing.assert_allclose(inner.predict(None, x)[CLASSES].to_numpy(), expected, rtol=1e-5)
    assert loaded.model_config["class_names"] == CLASSES

    versions = mlflow.MlflowClient().search_model_versions("name='pet-test'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    by_name = mlflow.pyfunc.load_model("models:/pet-test/1")
    np.testing.assert_allclose(
        by_name.predict(pd.DataFrame({"path": [str(images[1])]}))[CLASSES].to_numpy(),
        expected[1:2],
        rtol=1e-5,
    )


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_logging_to_a_real_tracking_server(mlflow_store, manifests, mlflow_server, monkeypatch):
    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    tags = tracking.run_tags(manifests, WEIGHTS_META)
    with tracking.start_training_run(
        {"experiment": "served"}, {"train": {"epochs": 2}}, tags
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
