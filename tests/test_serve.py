"""The logged MLflow model (models from code, per-row answers), `petscan serve` as a real
scoring server on 127.0.0.1, and `petscan.load_model` from the repository root."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLASS_NAMES as CLASSES
from conftest import (
    free_port,
    refused_images,
    running_server,
    tiny_image_classifier,
    tiny_model_params,
    write_png,
)
from PIL import Image

import petscan
from petscan.data.images import load_rgb, resize
from petscan.params.schema import section
from petscan.serving import loading
from petscan.tracking import model_logging, store
from petscan.tracking import runs as tracking

MODEL_NAME = "pet-serve-test"
MAX_PIXELS = 120 * 120


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_globals_restored):
    """A repository root with params.yaml, images, and a tiny model registered as version 1."""
    root = tmp_path_factory.mktemp("repo")
    params = {
        "mlflow": {"tracking_uri": None, "experiment": "serve", "registered_model": MODEL_NAME},
        "serve": {"model": None, "host": "127.0.0.1", "port": 5001, "workers": 1},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(3)
    images = {
        "rgb": write_png(root / "scans/rgb.png", rng.integers(0, 256, (50, 40, 3), np.uint8)),
        "rgba": write_png(root / "scans/rgba.png", rng.integers(0, 256, (64, 48, 4), np.uint8)),
        "grey16": root / "scans/grey16.png",
        "big": write_png(root / "scans/big.png", np.full((130, 130), 90, np.uint8)),
        "text": root / "scans/notes.png",
    }
    Image.fromarray(rng.integers(0, 65535, (40, 60), dtype=np.uint16)).save(images["grey16"])
    images["text"].write_text("not an image")
    model = tiny_image_classifier(seed=5)
    model.save(root / "model.keras")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETSCAN_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow_params = section("mlflow", params["mlflow"])
        with tracking.start_training_run(mlflow_params, {}, {"random_init": "true"}):
            info = model_logging.log_keras_model(
                root / "model.keras",
                mlflow_params,
                CLASSES,
                tiny_model_params(),
                input_example=[str(images["rgb"])],
                max_pixels=MAX_PIXELS,
            )
    return {"root": root, "images": images, "model": model, "info": info}


def reference(repo, *names: str) -> np.ndarray:
    x = np.stack([resize(load_rgb(repo["images"][n]), (32, 32)) for n in names])
    return repo["model"].predict(x.astype(np.float32), verbose=0)


@pytest.fixture
def in_repo(repo, monkeypatch):
    monkeypatch.setenv("PETSCAN_ROOT", str(repo["root"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(repo["root"])
    return repo


# --------------------------------------------------------------------------- the logged model


def test_logged_as_code_with_the_keras_file_as_an_artifact(in_repo):
    info = in_repo["info"]
    flavor = info.flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert flavor["artifacts"]["keras_model"]["path"] == "artifacts/model.keras"
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "pyfunc_code.py").read_text().count("set_model(PetscanKerasModel())") == 1
    assert not list(local.rglob("*.pkl")), "nothing is pickled"
    keras_file = local / "artifacts" / "model.keras"
    assert keras.saving.load_model(keras_file, safe_mode=True).count_params() == (
        in_repo["model"].count_params()
    )
    assert info.signature.inputs.input_names() == ["path", "image"]
    assert info.signature.outputs.input_names() == [*CLASSES, "predicted_class", "error"]
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["path", "image"] and len(example["data"]) == 2


def test_rows_answer_one_by_one(in_repo):
    images = in_repo["images"]
    loaded = petscan.load_model(f"models:/{MODEL_NAME}/1")
    frame = pd.DataFrame(
        {
            "path": [
                str(images["rgb"]),
                None,
                str(images["text"]),
                "missing.png",
                str(images["rgb"].parent),
                None,
                None,
                str(images["big"]),
                None,
            ],
            "image": [
                None,
                b64(images["rgba"].read_bytes()),
                None,
                None,
                None,
                "",
                "%%% not base64",
                None,
                b64(images["grey16"].read_bytes()),
            ],
        }
    )
    out = loaded.predict(frame)
    assert list(out.columns) == [*CLASSES, "predicted_class", "error"]
    good = [0, 1, 8]
    expected = reference(in_repo, "rgb", "rgba", "grey16")
    got = out.loc[good, CLASSES].to_numpy(dtype=float)  # object columns: a bad row holds None
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert list(out.loc[good, "predicted_class"]) == [CLASSES[i] for i in expected.argmax(1)]
    assert out.loc[good, "error"].isna().all()
    errors = out["error"].tolist()
    assert errors[2] == f"{images['text']}: not an image (unknown format)"
    assert errors[3] == "missing.png: no such file (paths are read by the model's process)"
    assert errors[4].endswith("is a folder, not an image file")
    assert errors[5] == "row 5 image: empty file (0 bytes)"
    assert errors[6].startswith("row 6 image: not valid base64")
    assert errors[7] == (
        f"{images['big']}: too large: 130 x 130 pixels (limit split.max_pixels = {MAX_PIXELS})"
    )
    bad = [2, 3, 4, 5, 6, 7]
    assert out.loc[bad, [*CLASSES, "predicted_class"]].map(lambda v: v is None).all().all()


def test_the_served_model_refuses_what_split_refuses(in_repo, tmp_path):
    """1 x 1, 5000 x 1, all-NaN and blank images: an error row each, as file or bytes, with
    split's reason (the model was logged with split's default rules), and no probability."""
    refused = refused_images(tmp_path)
    names = sorted(refused)
    files = [refused[n][0] for n in names]
    frame = pd.DataFrame(
        {
            "path": [str(f) for f in files] + [None] * len(files),
            "image": [None] * len(files) + [b64(f.read_bytes()) for f in files],
        }
    )
    out = petscan.load_model(f"models:/{MODEL_NAME}/1").predict(frame)
    reasons = [refused[n][1] for n in names]
    assert out["error"].tolist() == [f"{f}: {r}" for f, r in zip(files, reasons, strict=True)] + [
        f"row {k + len(files)} image: {r}" for k, r in enumerate(reasons)
    ]
    assert out[CLASSES].isna().all().all() and out["predicted_class"].isna().all()


def test_load_model_from_the_repository_root_leaves_no_files(in_repo):
    root = in_repo["root"]
    before = sorted(p.name for p in root.iterdir())
    latest = petscan.load_model()  # no URI: the latest version of mlflow.registered_model
    out = latest.predict(pd.DataFrame({"path": [str(in_repo["images"]["rgb"])]}))
    np.testing.assert_allclose(out[CLASSES].to_numpy(), reference(in_repo, "rgb"), rtol=1e-5)
    assert sorted(p.name for p in root.iterdir()) == before
    assert not (root / "mlflow.db").exists()


def test_load_model_outside_a_repository_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("PETSCAN_ROOT", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no MLflow store at sqlite:///.*run from the repo"):
        petscan.load_model("models:/pet-classifier/1")
    assert list(tmp_path.iterdir()) == []


def test_resolve_model_uri(in_repo):
    store.use_store(section("mlflow"))
    assert loading.resolve_model_uri("models:/x@champion", section("mlflow")) == (
        "models:/x@champion"
    )
    named = section("mlflow", {"registered_model": MODEL_NAME})
    assert loading.resolve_model_uri(None, named) == f"models:/{MODEL_NAME}/1"
    with pytest.raises(LookupError, match="no version of the model 'nope'"):
        loading.resolve_model_uri(None, section("mlflow", {"registered_model": "nope"}))
    with pytest.raises(LookupError, match="pass --model"):
        loading.resolve_model_uri(None, section("mlflow", {"registered_model": None}))


def strict_json(text: str):
    """`json.loads` as strict parsers do it: NaN, Infinity and -Infinity are errors."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_bad_rows_and_non_finite_probabilities_answer_null_never_nan():
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from petscan.serving.pyfunc import NOT_FINITE, result_frame

    proba = np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [np.nan, 0.5, 0.5], [0.1, np.inf, 0.2]])
    frame = result_frame(proba, CLASSES, [None, "row 1: bad", None, None])
    output = io.StringIO()
    predictions_to_json(frame, output)
    rows = strict_json(output.getvalue())["predictions"]
    assert [r[CLASSES[2]] for r in rows] == [0.5, None, None, None]
    assert [r["predicted_class"] for r in rows] == [CLASSES[2], None, None, None]
    assert [r["error"] for r in rows] == [None, "row 1: bad", NOT_FINITE, NOT_FINITE]
    good = result_frame(proba[:1], CLASSES, [None])
    assert good[CLASSES].dtypes.tolist() == [np.float64] * 3  # all good: plain float columns


# --------------------------------------------------------------------------- a real server


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def split_body(columns: list[str], rows: list[list]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """`petscan serve` with only /usr/bin and /bin on PATH (MLflow then needs our fix to
    find `uvicorn`), on a free 127.0.0.1 port; the latest version of the test model."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(
        PETSCAN_ROOT=str(repo["root"]),
        PATH="/usr/bin:/bin",
        PYTHONPATH=str(Path(petscan.__file__).resolve().parents[1]),
    )
    cmd = [sys.executable, "-m", "petscan.cli", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, url, "/ping", log_path, 180, cwd=repo["root"], env=env):
        yield url, log_path


def test_server_answers_good_bad_and_mixed_batches(server, repo):
    url, log_path = server
    images = repo["images"]
    assert f"models:/{MODEL_NAME}/1" in log_path.read_text()

    status, text = post(f"{url}/invocations", split_body(["path"], [[str(images["rgb"])]]))
    assert status == 200, text
    [row] = json.loads(text)["predictions"]
    expected = reference(repo, "rgb")[0]
    np.testing.assert_allclose([row[c] for c in CLASSES], expected, rtol=1e-5, atol=1e-7)
    assert row["predicted_class"] == CLASSES[int(expected.argmax())] and row.get("error") is None

    status, text = post(
        f"{url}/invocations",
        split_body(["image"], [[b64(images["text"].read_bytes())], [""]]),
    )
    assert status == 200, text
    bad = json.loads(text)["predictions"]
    assert [r["error"] for r in bad] == [
        "row 0 image: not an image (unknown format)",
        "row 1 image: empty file (0 bytes)",
    ]
    assert all(r["predicted_class"] is None for r in bad)

    mixed = [
        [None, b64(images["grey16"].read_bytes())],
        ["/no/such/scan.png", None],
        [str(images["rgba"]), None],
        [str(images["big"]), None],
    ]
    status, text = post(f"{url}/invocations", split_body(["path", "image"], mixed))
    assert status == 200, text
    rows = strict_json(text)["predictions"]
    assert [rows[i][c] for i in (1, 3) for c in CLASSES] == [None] * 2 * len(CLASSES)
    expected = reference(repo, "grey16", "rgba")
    for row, proba in zip([rows[0], rows[2]], expected, strict=True):
        np.testing.assert_allclose([row[c] for c in CLASSES], proba, rtol=1e-5, atol=1e-7)
        assert row.get("error") is None
    assert rows[1]["error"].startswith("/no/such/scan.png: no such file")
    assert rows[3]["error"].endswith(
        f"too large: 130 x 130 pixels (limit split.max_pixels = {MAX_PIXELS})"
    )
    assert "Traceback" not in text


def test_server_rejects_malformed_requests_without_a_stack_trace(server):
    url, _ = server
    for body, content_type in (
        (split_body(["patient"], [["x"]]), "application/json"),
        (b"{not json", "application/json"),
        (b"\x89PNG raw bytes", "image/png"),
    ):
        status, text = post(f"{url}/invocations", body, content_type)
        assert 400 <= status < 500, (status, text)
        assert "Traceback" not in text and "stack_trace" not in text, text
