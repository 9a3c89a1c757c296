"""`petscan predict`: folders, bad files, CSV output, a model from the MLflow registry."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLASS_NAMES as CLASSES
from conftest import tiny_image_classifier, tiny_model_params, write_png

from petscan.data.images import ImageError, load_resized
from petscan.model.saving import load_model
from petscan.params.schema import section
from petscan.serving import predict


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    model = tiny_image_classifier(seed=11)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three good images (one nested, one RGBA) and one file that is not an image."""
    rng = np.random.default_rng(5)
    scans = tmp_path / "scans"
    write_png(scans / "a.png", rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))
    write_png(scans / "b.png", rng.integers(0, 256, (64, 64, 4), dtype=np.uint8))
    write_png(scans / "nested/c.png", rng.integers(0, 256, (32, 70), dtype=np.uint8))
    (scans / "broken.png").write_bytes(b"this is not a PNG")
    return scans


@pytest.fixture
def params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    params = {
        "data": {
            "classes": {
                "No cancer": "No cancer",
                "breast": "Breast cancer",
                "prostate": "Prostate cancer",
            }
        },
        "model": {"input_size": [224, 224], "resize": "stretch"},  # the model's 32 x 32 wins
    }
    path.write_text(yaml.safe_dump(params))
    return path


def expected_proba(model_file: Path, paths: list[Path]) -> np.ndarray:
    model = keras.models.load_model(model_file)
    x = np.stack([load_resized(p, (32, 32), "stretch") for p in paths])
    return model.predict(x, verbose=0)


def test_predict_paths_skips_bad_files_and_matches_keras(model_file, folder):
    model = load_model(model_file)
    files, errors = predict.expand_paths([folder, folder / "missing.png"])
    assert [p.name for p in files] == ["a.png", "b.png", "broken.png", "c.png"]
    assert errors == [(str(folder / "missing.png"), "no such file or folder")]
    frame = predict.predict_paths(model, files, CLASSES, (32, 32), batch_size=2, errors=errors)
    good = [folder / "a.png", folder / "b.png", folder / "nested/c.png"]
    assert list(frame.columns) == ["path", *CLASSES, "predicted_class"]
    assert list(frame["path"]) == [p.as_posix() for p in good]
    proba = expected_proba(model_file, good)
    np.testing.assert_allclose(frame[CLASSES].to_numpy(), proba, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(frame[CLASSES].sum(axis=1), 1.0, rtol=1e-5)
    assert list(frame["predicted_class"]) == [CLASSES[i] for i in proba.argmax(axis=1)]
    assert errors[1][0] == str(folder / "broken.png")
    assert "not an image" in errors[1][1]
    with pytest.raises(ImageError, match="broken.png"):
        predict.predict_paths(model, [folder / "broken.png"], CLASSES, (32, 32))


def test_cli_writes_csv_for_good_files_and_reports_the_bad_one(
    model_file, folder, params_file, tmp_path, capsys
):
    out = tmp_path / "out" / "pred.csv"
    code = predict.main(
        [str(folder), "--model", str(model_file), "--csv", str(out), "--params", str(params_file)]
    )
    assert code == 0
    frame = pd.read_csv(out)
    good = [folder / "a.png", folder / "b.png", folder / "nested/c.png"]
    assert list(frame["path"]) == [p.as_posix() for p in good]
    np.testing.assert_allclose(
        frame[CLASSES].to_numpy(), expected_proba(model_file, good), rtol=1e-5, atol=1e-7
    )
    err = capsys.readouterr().err
    assert f"skipped {folder / 'broken.png'}: not an image" in err
    assert "wrote 3 predictions" in err


def test_cli_prints_a_table(model_file, folder, params_file, capsys):
    code = predict.main(
        [str(folder / "a.png"), "--model", str(model_file), "--params", str(params_file)]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["path", "No", "cancer"]
    assert out[1].startswith((folder / "a.png").as_posix())
    proba = expected_proba(model_file, [folder / "a.png"])[0]
    assert out[1].split()[1:4] == [f"{v:.4f}" for v in proba]


def test_cli_exit_code_when_nothing_was_predicted(model_file, folder, params_file, capsys):
    code = predict.main(
        [str(folder / "broken.png"), "--model", str(model_file), "--params", str(params_file)]
    )
    assert code == 1
    assert "no image could be predicted" in capsys.readouterr().err
    argv = [str(folder), "--model", "nope.keras", "--params", str(params_file)]
    assert predict.main(argv) == 1, "a missing model file is the user's problem: exit 1"
    assert capsys.readouterr().err == (
        "petscan predict: error: nope.keras not found: train a model first (`dvc repro`)\n"
    )


def test_cli_with_a_registered_mlflow_model(model_file, folder, tmp_path, mlflow_store, capsys):
    from petscan.tracking import model_logging
    from petscan.tracking import runs as tracking

    mlflow_params = section(
        "mlflow", {"experiment": "predict-test", "registered_model": "pet-predict"}
    )
    model_params = tiny_model_params()
    with tracking.start_training_run(mlflow_params, {}, {}):
        model_logging.log_keras_model(
            model_file, mlflow_params, CLASSES, model_params, input_example=[str(folder / "a.png")]
        )
    assert mlflow.active_run() is None
    out = tmp_path / "uri.csv"
    # no params.yaml needed: class names, size and resize come with the model
    code = predict.main(
        [
            str(folder),
            "--model-uri",
            "models:/pet-predict/1",
            "--csv",
            str(out),
            "--params",
            str(tmp_path / "absent.yaml"),
        ]
    )
    assert code == 0
    frame = pd.read_csv(out)
    good = [folder / "a.png", folder / "b.png", folder / "nested/c.png"]
    np.testing.assert_allclose(
        frame[CLASSES].to_numpy(), expected_proba(model_file, good), rtol=1e-5, atol=1e-7
    )
    assert "broken.png" in capsys.readouterr().err


class Trap(mlflow.pyfunc.PythonModel):
    """A pyfunc whose pickle runs code when it is loaded: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('pwned')",))

    def predict(self, context, model_input, params=None):
        return model_input


def test_model_uri_never_unpickles_a_foreign_store(
    model_file, folder, tmp_path, mlflow_store, capsys
):
    from petscan.tracking import runs as tracking

    marker = tmp_path / "unpickled.txt"
    config = {"class_names": CLASSES, "input_size": [32, 32], "resize": "stretch"}
    with tracking.start_training_run(section("mlflow", {"experiment": "foreign"}), {}, {}):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Trap(marker),
            artifacts={"keras_model": str(model_file)},  # looks like a petscan model
            model_config=config,
            registered_model_name="foreign",
        )
    marker.unlink(missing_ok=True)  # MLflow's logging unpickles it (pip inference)
    out = tmp_path / "p.csv"
    absent = str(tmp_path / "absent.yaml")
    args = [str(folder / "a.png"), "--model-uri", "models:/foreign/1", "--params", absent]
    assert predict.main([*args, "--csv", str(out)]) == 0
    assert not marker.exists()  # the pickle was never loaded ...
    np.testing.assert_allclose(  # ... and the .keras artifact predicted
        pd.read_csv(out)[CLASSES].to_numpy(),
        expected_proba(model_file, [folder / "a.png"]),
        rtol=1e-5,
        atol=1e-7,
    )
    # what --trust-store does is what the default avoids: the payload runs
    assert predict.main([*args, "--trust-store"]) == 1  # a model that cannot load: exit 1
    assert marker.read_text() == "pwned"
    assert "cannot load the model" in capsys.readouterr().err


def test_model_uri_without_a_petscan_keras_artifact_is_refused(
    model_file, tmp_path, mlflow_store, capsys
):
    from petscan.tracking import runs as tracking

    with tracking.start_training_run(section("mlflow", {"experiment": "foreign"}), {}, {}) as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Trap(tmp_path / "m"),
            model_config={"class_names": CLASSES, "input_size": [32, 32]},
        )
    (tmp_path / "m").unlink(missing_ok=True)  # MLflow's logging unpickles it (pip inference)
    uri = f"runs:/{run.info.run_id}/model"
    with pytest.raises(ValueError, match="no single .keras artifact inside the model"):
        predict.load_from_uri(uri)
    assert not (tmp_path / "m").exists()
