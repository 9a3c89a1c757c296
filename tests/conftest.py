"""Shared test helpers and fixtures.

Helpers (import them: `from conftest import CLASS_NAMES, write_png`):
- the class names, a tiny `model` section and random-init weights metadata;
- `write_png`, `manifest_row`, `write_manifest`: tiny image files and split manifests;
- `refused_images`: images every entry point must refuse, with the reason;
- `tiny_image_classifier`: a small Keras image -> probabilities model;
- `figure_texts`: every text drawn on a matplotlib figure (the report figures' tests);
- `load_script`: a stage or bench script imported by its path;
- `serve_mlflow`: a real `mlflow server` on 127.0.0.1 for the duration of a `with` block.

Fixtures: `make_raw_dir`, `data_params`, `split_params` (a folder laid out like
`data.raw_dir`), `mlflow_store` (an isolated MLflow store) and `team` (one `make team-up`
for the session's team tests, see team_server.py).
Keras is imported only inside the helpers that need it, so tests without TensorFlow
stay fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from petscan.handoff.records import WeightsInfo
from petscan.params.schema import section

REPO = Path(__file__).resolve().parents[1]

# The seed's folder -> class mapping, as in params.yaml `data.classes`.
CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}
# The class names in label order (`config.class_names` of the mapping above).
CLASS_NAMES = ["No cancer", "Breast cancer", "Prostate cancer"]
PATIENT_PATTERN = r"^(?P<patient>[A-Za-z0-9-]+?)_v\d+"


# --------------------------------------------------------------------------- params


def tiny_model_params(**overrides: Any) -> dict[str, Any]:
    """A `model` section with the `tiny` backbone on 32 x 32 inputs and an 8-unit head."""
    params = {
        "backbone": "tiny",
        "input_size": [32, 32],
        "preprocessing": "radimagenet",
        "resize": "stretch",
        "head_units": 8,
        "l2": 0.001,
        "dropout": 0.7,
        "standardize": True,
    }
    return section("model", {**params, **overrides})


def random_weights_meta(sha256: str = "0" * 64) -> dict[str, Any]:
    """`weights.json` of a random-init `tiny` backbone."""
    return random_weights(sha256).to_dict()


def random_weights(sha256: str = "0" * 64) -> WeightsInfo:
    """The `WeightsInfo` of a random-init `tiny` backbone."""
    return WeightsInfo(
        backbone="tiny",
        weights_source="random",
        weights_sha256=sha256,
        random_init=True,
        weights_label="RANDOM-INIT backbone (not RadImageNet)",
    )


# --------------------------------------------------------------------------- files


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Save `pixels` (uint8 H x W or H x W x C) as `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode)
    image.save(path)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk claiming `width` x `height` 8-bit grey, and IEND: no
    pixel data, so Pillow reads the size and decoding fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def unique_png(path: Path, number: int, size: int = 8) -> Path:
    """A grey `size` x `size` PNG whose bytes are unique to `number`."""
    pixels = np.full((size, size), 200, dtype=np.uint8)
    pixels.flat[:4] = np.frombuffer(int(number).to_bytes(4, "big"), dtype=np.uint8)
    return write_png(path, pixels)


def refused_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Images every entry point must refuse under the default rules (`split.min_side` 32,
    `split.max_aspect` 8): {name: (file, reason)}. All decode; none is a whole-body image."""
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "dot.png", np.full((1, 1), 90, np.uint8))
    write_png(
        folder / "line.png", np.arange(5000, dtype=np.uint16).reshape(1, 5000).astype(np.uint8)
    )
    Image.fromarray(np.full((64, 64), np.nan, np.float32)).save(folder / "nan.tif")
    write_png(folder / "blank.png", np.full((64, 64), 128, np.uint8))
    return {
        "dot": (folder / "dot.png", "too small: 1 x 1 pixels (split.min_side = 32)"),
        "line": (folder / "line.png", "too small: 5000 x 1 pixels (split.min_side = 32)"),
        "nan": (
            folder / "nan.tif",
            "no finite pixel value (every pixel is NaN or infinite): nothing to read",
        ),
        "blank": (
            folder / "blank.png",
            "blank: every pixel is the same colour (128, 128, 128); nothing to classify",
        ),
    }


def manifest_row(path: str, label: int, patient: str, sha256: str) -> dict[str, Any]:
    """One row of a split manifest (`data/split/<split>.csv`), class named by `CLASS_NAMES`."""
    return {
        "path": path,
        "class": CLASS_NAMES[label],
        "label": label,
        "patient": patient,
        "sha256": sha256,
    }


def write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Write `rows` as a manifest CSV at `path` (folder created) and return them as a frame."""
    frame = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


# --------------------------------------------------------------------------- code


def figure_texts(fig: Any) -> list[str]:
    """Every non-empty text drawn on a matplotlib `fig` (banner, titles, labels, ticks,
    legends, cells)."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def tiny_image_classifier(seed: int):
    """A small uncompiled Keras model: (32, 32, 3) images in 0..255 -> 3 probabilities."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def load_script(relpath: str) -> ModuleType:
    """A stage or bench script (not a package) imported by its path from the repository root."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"{path.stem}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_mlflow(backend_store_uri: str, artifacts: Path, log_dir: Path) -> Iterator[str]:
    """Start `mlflow server` on a free port of 127.0.0.1 over `backend_store_uri` (serving
    artifacts from `artifacts`); yield its URL; stop it. Its output goes to log_dir/server.log."""
    port = free_port()
    log_path = Path(log_dir) / "server.log"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with running_server(cmd, f"http://127.0.0.1:{port}", "/health", log_path, 120) as url:
        yield url


@contextlib.contextmanager
def running_server(
    cmd: Sequence[str], url: str, ready_path: str, log_path: Path, timeout_s: float, **popen: Any
) -> Iterator[str]:
    """Run `cmd` in its own process group (output to `log_path`), wait until
    `url + ready_path` answers 200 (the test fails with the log after `timeout_s` or when
    the process ends), yield `url`, then stop the whole group."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_raw_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_raw_dir({"No cancer": 5, ...}, views=(1, 3), seed=0)` -> data/raw.

    Writes unique 8x8 PNGs named `<patient>_v<k>.png` (patients `pt-00001`, ... with
    `views` images each, drawn in the inclusive range) under `tmp_path/data/raw/<folder>`.
    """

    def make(counts: dict[str, int], views: tuple[int, int] = (1, 1), seed: int = 0) -> Path:
        raw = tmp_path / "data" / "raw"
        rng = np.random.default_rng(seed)
        number = patient = 0
        for folder, total in counts.items():
            (raw / folder).mkdir(parents=True, exist_ok=True)
            written = 0
            while written < total:
                patient += 1
                for view in range(min(int(rng.integers(views[0], views[1] + 1)), total - written)):
                    number += 1
                    written += 1
                    unique_png(raw / folder / f"pt-{patient:05d}_v{view + 1}.png", number)
        return raw

    return make


@pytest.fixture
def data_params() -> dict:
    """The `data` section for a folder made by `make_raw_dir` (paths relative to tmp_path)."""
    return {"raw_dir": "data/raw", "classes": dict(CLASSES), "patient_pattern": PATIENT_PATTERN}


@pytest.fixture
def split_params() -> dict:
    return {
        "mode": "group",
        "ratios": [0.9, 0.05, 0.05],
        "seed": 101,
        "restarts": 32,
        "max_file_mb": 64,
        "max_pixels": 50_000_000,
        "min_side": 8,  # the tiny test images are 8 x 8
        "max_aspect": 8.0,
        "out_dir": "data/split",
    }


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated repository root (PETSCAN_ROOT) with no tracking URI in the environment.

    MLflow's store lands in `<root>/mlruns`; runs left open by a failing test are ended.
    """
    import mlflow

    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setenv("PETSCAN_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    yield root
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def mlflow_globals_restored() -> Iterator[None]:
    """Restore MLflow's process-wide tracking and registry URIs (and the environment
    variables `mlflow.set_tracking_uri` / `set_registry_uri` export) after a module whose
    fixtures point MLflow at a store of their own, so later modules see none of it."""
    import os

    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking_service

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    environ = {name: os.environ.get(name) for name in names}
    uris = (tracking_service._tracking_uri, registry._registry_uri)
    yield
    tracking_service._tracking_uri, registry._registry_uri = uris
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def team(tmp_path_factory):
    """The team's services (team_server.Team) for the session; skips when none can start."""
    from team_server import USERS, team_up

    with team_up(tmp_path_factory.mktemp("team"), users=USERS) as team:
        if isinstance(team, str):
            pytest.skip(team)
        yield team
