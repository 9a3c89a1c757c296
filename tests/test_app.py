"""`petscan app`: the web page's API on a real uvicorn server on 127.0.0.1, and the page
itself in a real headless Chromium (skipped, with the reason, when none is installed)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import REPO, free_port, refused_images, tiny_model_params, write_png
from PIL import Image

from petscan.data.images import load_rgb, resize
from petscan.params.schema import section
from petscan.tracking import model_logging, store
from petscan.tracking import runs as tracking

MODEL_NAME = "pet-app-test"
MAX_PIXELS = 300 * 300
SETTINGS = {  # of the `app` section (host and port: the server the tests start)
    "max_upload_mb": 0.25,
    "max_batch": 4,
    "batch_wait_ms": 30,
    "overlay_max_side": 96,
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_globals_restored):
    """A store with a tiny model (the project's own architecture) registered as version 1,
    tagged random-init, and a folder of good and bad files."""
    from petscan.model.network import build_full_model

    root = tmp_path_factory.mktemp("repo")
    rng = np.random.default_rng(11)
    data = root / "data"
    files = {
        "rgb": write_png(data / "scan_rgb.png", rng.integers(0, 256, (120, 80, 3), np.uint8)),
        "rgba": write_png(data / "scan_rgba.png", rng.integers(0, 256, (64, 64, 4), np.uint8)),
        "grey16": data / "scan_16bit.png",
        "jpeg": data / "scan.jpg",
        "wide": write_png(data / "too_many_pixels.png", np.full((10, 9001), 80, np.uint8)),
        "text": data / "notes.png",
        "empty": data / "empty.png",
        "huge": data / "huge.png",
    }
    Image.fromarray(rng.integers(0, 65535, (70, 50), dtype=np.uint16)).save(files["grey16"])
    Image.fromarray(rng.integers(0, 256, (90, 90, 3), np.uint8)).save(files["jpeg"], quality=90)
    files["text"].write_text("patient notes, not an image")
    files["empty"].write_bytes(b"")
    files["huge"].write_bytes(rng.integers(0, 256, 300_000, np.uint8).tobytes())  # > 0.25 MB
    model = build_full_model(tiny_model_params(), len(CLASSES), None)
    model.save(root / "model.keras")
    mlflow_params = section("mlflow", {"experiment": "app", "registered_model": MODEL_NAME})
    tags = {"random_init": "true", "weights_label": "RANDOM-INIT backbone (not RadImageNet)"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETSCAN_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with tracking.start_training_run(mlflow_params, {}, tags) as run:
            model_logging.log_keras_model(
                root / "model.keras", mlflow_params, CLASSES, tiny_model_params()
            )
    return {"root": root, "files": files, "model": model, "run_id": run.info.run_id}


@pytest.fixture(scope="module")
def app_url(repo):
    """`create_app` for `models:/<name>@...` version 1 on a real uvicorn server (a thread)."""
    import uvicorn

    from petscan.serving.app.explainer import load_served_model
    from petscan.serving.app.server import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETSCAN_ROOT", str(repo["root"]))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.use_store(section("mlflow"))
        served = load_served_model(f"models:/{MODEL_NAME}/1", max_pixels=MAX_PIXELS)
    port = free_port()
    config = uvicorn.Config(
        create_app(served, section("app", SETTINGS)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/octet-stream"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def upload(app_url: str, path: Path) -> tuple[int, dict]:
    return post(f"{app_url}/api/predict?name={urllib.parse.quote(path.name)}", path.read_bytes())


def reference(repo, name: str) -> np.ndarray:
    rgb = load_rgb(repo["files"][name])
    return repo["model"].predict(resize(rgb, (32, 32))[None].astype(np.float32), verbose=0)[0]


# --------------------------------------------------------------------------- the API


def test_info_names_the_model_version_run_and_random_init(app_url, repo):
    with urllib.request.urlopen(f"{app_url}/api/info") as reply:
        info = json.loads(reply.read())
    assert info["model"] == {
        "uri": f"models:/{MODEL_NAME}/1",
        "name": MODEL_NAME,
        "version": "1",
        "run_id": repo["run_id"],
        "random_init": True,
        "weights_label": "RANDOM-INIT backbone (not RadImageNet)",
        "classes": CLASSES,
    }
    assert info["notice"] == "Research use only: not a medical device."
    assert info["max_upload_mb"] == 0.25 and info["max_pixels"] == MAX_PIXELS


@pytest.mark.parametrize("name", ["rgb", "rgba", "grey16", "jpeg"])
def test_a_good_image_gets_probabilities_and_an_overlay(app_url, repo, name):
    status, result = upload(app_url, repo["files"][name])
    assert status == 200, result
    expected = reference(repo, name)
    got = [result["probabilities"][c] for c in CLASSES]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert result["predicted_class"] == CLASSES[int(expected.argmax())]
    assert result["explained_class"] == result["predicted_class"]
    height, width = load_rgb(repo["files"][name]).shape[:2]
    assert (result["width"], result["height"]) == (width, height)
    assert 0 <= result["peak"][0] < width and 0 <= result["peak"][1] < height
    header, encoded = result["overlay"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
    scale = min(1.0, SETTINGS["overlay_max_side"] / max(width, height))
    assert picture.size == (round(width * scale), round(height * scale))
    assert result["model"]["version"] == "1" and result["model"]["random_init"] is True
    assert result["notice"] == "Research use only: not a medical device."


@pytest.mark.parametrize(
    "name, status, message",
    [
        ("text", 415, "not an image (unknown format)"),
        ("empty", 400, "empty file (0 bytes)"),
        ("huge", 413, "larger than the upload limit of 0.25 MB"),
        ("wide", 413, f"too large: 9001 x 10 pixels (limit split.max_pixels = {MAX_PIXELS})"),
    ],
)
def test_a_bad_upload_gets_a_4xx_and_one_clear_line(app_url, repo, name, status, message):
    got_status, result = upload(app_url, repo["files"][name])
    assert (got_status, result) == (status, {"file": repo["files"][name].name, "error": message})


@pytest.mark.parametrize("name", ["dot", "line", "nan", "blank"])
def test_an_image_split_refuses_is_refused_with_split_s_reason(app_url, tmp_path, name):
    path, reason = refused_images(tmp_path)[name]  # 1 x 1, 5000 x 1, all NaN, one grey
    assert upload(app_url, path) == (400, {"file": path.name, "error": reason})


def test_concurrent_uploads_are_batched_without_mixing_and_nothing_is_written(app_url, repo):
    before = sorted(p.name for p in repo["root"].rglob("*") if "mlruns" not in p.parts)
    names = ["rgb", "rgba", "grey16", "jpeg", "text", "rgb", "jpeg", "grey16"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda n: upload(app_url, repo["files"][n]), names))
    for name, (status, result) in zip(names, replies, strict=True):
        if name == "text":
            assert status == 415
            continue
        assert status == 200
        np.testing.assert_allclose(
            [result["probabilities"][c] for c in CLASSES], reference(repo, name), rtol=1e-5
        )
    after = sorted(p.name for p in repo["root"].rglob("*") if "mlruns" not in p.parts)
    assert after == before


def test_a_path_in_the_file_name_is_only_a_label(app_url, repo):
    status, result = post(
        f"{app_url}/api/predict?name=../../etc/passwd", repo["files"]["rgb"].read_bytes()
    )
    assert status == 200 and result["file"] == "passwd"


def test_the_load_bench_against_the_app(app_url):
    from conftest import load_script

    bench = load_script("bench/app_load.py")
    body = bench.test_image(128)
    result = bench.load(app_url, body, clients=4, seconds=2.0, cap=40)
    assert result["requests"] > 0 and result["ok"] == result["requests"]
    assert result["5xx"] == 0 and result["no_answer"] == 0
    assert result["p50_s"] <= result["p95_s"]
    stages = result["server_ms"]  # per stage, from each answer's timings_ms
    assert set(STAGES) | {"batch_size"} <= set(stages)
    assert 1 <= stages["batch_size"]["p50"] <= SETTINGS["max_batch"]
    assert all(0 <= stages[n]["p50"] <= stages[n]["p95"] for n in STAGES)


STAGES = (  # in the order a request goes through them
    "slot_wait",
    "upload",
    "budget_wait",
    "decode",
    "queue_wait",
    "resize",
    "model",
    "heatmap",
    "overlay",
    "jpeg",
)


def test_each_answer_says_where_the_server_spent_its_time(app_url, repo):
    status, result = upload(app_url, repo["files"]["rgb"])
    assert status == 200, result
    timings = result["timings_ms"]
    assert set(timings) == {f"{n}_ms" for n in STAGES} | {"batch_size", "total_ms"}
    assert all(timings[f"{n}_ms"] >= 0 for n in STAGES)
    assert timings["model_ms"] > 0 and timings["jpeg_ms"] > 0 and timings["batch_size"] >= 1
    # the stages follow each other: together they fit in the request's total
    assert sum(timings[f"{n}_ms"] for n in STAGES) <= timings["total_ms"] + 1.0


def test_the_page_and_its_assets_are_served_locally(app_url):
    with urllib.request.urlopen(app_url) as reply:
        page = reply.read().decode()
    assert "Research use only: not a medical device" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline
    for asset in ("/static/app.js", "/static/app.css"):
        with urllib.request.urlopen(app_url + asset) as reply:
            body = reply.read()
            assert reply.status == 200 and b"http://" not in body and b"https://" not in body


# --------------------------------------------------------------------------- in a browser


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_in_chromium_shows_a_result_and_an_error(browser, app_url, repo):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "version 1" in d.find_element(By.ID, "model-info").text)
    assert browser.find_element(By.ID, "random-init").is_displayed()
    assert repo["run_id"] in browser.find_element(By.ID, "model-info").text

    files = [repo["files"]["rgb"], repo["files"]["text"]]
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.result, .card.error")) == 2)

    good = browser.find_element(By.CSS_SELECTOR, ".card.result")
    expected = reference(repo, "rgb")
    assert "scan_rgb.png" in good.text
    assert f"Predicted: {CLASSES[int(expected.argmax())]}" in good.text
    bars = good.find_elements(By.CSS_SELECTOR, ".bar")
    assert [b.find_element(By.CSS_SELECTOR, ".label").text for b in bars] == CLASSES
    shown = [float(b.find_element(By.CSS_SELECTOR, ".value").text.rstrip("%")) for b in bars]
    np.testing.assert_allclose(shown, np.round(100 * expected, 1), atol=0.051)
    image = good.find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    assert f"{MODEL_NAME} v1" in good.text and repo["run_id"][:8] in good.text

    bad = browser.find_element(By.CSS_SELECTOR, ".card.error")
    assert "notes.png" in bad.text and "not an image (unknown format)" in bad.text
    for card in (good, bad):
        assert "Research use only: not a medical device" in card.text
        assert "RANDOM-INIT backbone (not RadImageNet)" in card.text
    summary = browser.find_element(By.ID, "summary").text
    assert summary == "2 images: 1 analysed, 1 not usable"

    csv = browser.execute_script("return toCsv()").splitlines()
    assert csv[0].startswith("file,predicted_class,No cancer,Breast cancer,Prostate cancer")
    rows = {line.split(",")[0]: line for line in csv[1:]}
    assert set(rows) == {"scan_rgb.png", "notes.png"}
    assert rows["notes.png"].count("not an image (unknown format)") == 1
    assert f",{MODEL_NAME},1,{repo['run_id']},true," in rows["scan_rgb.png"]

    reports = REPO / "reports"
    reports.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(reports / "app_page.png"))


# --------------------------------------------------------------------------- loading


def test_an_alias_resolves_to_its_version_and_run(repo, monkeypatch):
    import mlflow

    from petscan.serving.app.explainer import load_served_model

    monkeypatch.setenv("PETSCAN_ROOT", str(repo["root"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store.use_store(section("mlflow"))
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "1")
    served = load_served_model(f"models:/{MODEL_NAME}@champion")
    assert (served.name, served.version, served.run_id) == (MODEL_NAME, "1", repo["run_id"])
    assert served.random_init is True and served.class_names == CLASSES


def test_the_app_command_without_a_registered_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    import mlflow
    import yaml

    from petscan.serving.app import server as app

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert app.main(["--params", str(tmp_path / "params.yaml")]) == 1  # no store
    err = capsys.readouterr().err
    assert err == (
        f"petscan app: error: no MLflow store at sqlite:///{tmp_path}/mlruns/mlflow.db: run from "
        "the repository (or set MLFLOW_TRACKING_URI) and train a model first (`make run`)\n"
    )
    store.use_store(section("mlflow"))
    mlflow.MlflowClient().search_registered_models()  # an empty store
    capsys.readouterr()  # MLflow's lines about creating it
    assert app.main(["--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert err == (
        "petscan app: error: no version of the model 'pet-classifier' is registered in "
        f"sqlite:///{tmp_path}/mlruns/mlflow.db: train one first (`make run` or `dvc repro`)\n"
    )


def test_the_app_command_announces_its_url_only_once_the_port_answers(repo, tmp_path):
    """`petscan app` as a user runs it: the moment the URL line appears, the page answers."""
    import os
    import subprocess
    import sys

    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"].update(registered_model=MODEL_NAME, experiment="app")
    params["app"].update(max_batch=2, batch_wait_ms=5)  # a short warm-up is still seconds
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PETSCAN_ROOT=str(repo["root"]), PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "petscan.cli", "app", "--params", str(tmp_path / "params.yaml")]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if f"http://127.0.0.1:{port}/" in line:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    assert r.status == 200 and json.loads(r.read())["model"]["version"] == "1"
                break
        else:
            pytest.fail(f"petscan app ended without announcing its URL:\n{''.join(lines)}")
        assert lines[-1].startswith(f"petscan app: models:/{MODEL_NAME}/1 (version 1, run ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
