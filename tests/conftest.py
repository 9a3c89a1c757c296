"""Shared fixtures: tiny on-disk image folders laid out like `data.raw_dir`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The seed's folder -> class mapping, as in params.yaml `data.classes`.
CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}
PATIENT_PATTERN = r"^(?P<patient>[A-Za-z0-9-]+?)_v\d+"


def unique_png(path: Path, number: int, size: int = 8) -> Path:
    """A grey `size` x `size` PNG whose bytes are unique to `number`."""
    pixels = np.full((size, size), 200, dtype=np.uint8)
    pixels.flat[:4] = np.frombuffer(int(number).to_bytes(4, "big"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


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
        "max_file_mb": 64,
        "max_pixels": 50_000_000,
        "out_dir": "data/split",
    }
