"""A classifier's `.keras` file: saved byte-reproducibly, loaded safely.

`save_model` writes the archive atomically and `make_reproducible` removes what Keras
stamps on it (the time, memory addresses), so the same model is always the same bytes
(its sha256 finds the MLflow run that trained it). `load_model` refuses unsafe (Lambda)
layers. Kept apart from `network` so that building the feature extractor (the featurize
stage) does not need the training losses that loading a compiled classifier registers.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras

# Keras finds the custom layers, losses and metrics of a saved model by their registered names:
# importing these modules registers them
from petscan.model import calibration, losses, network  # noqa: F401
from petscan.utils.io import atomic_path


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save a `.keras` file atomically (a reader never sees half a model), byte-reproducible."""
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        make_reproducible(tmp)
    return path


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a `.keras` model written by this project, refusing unsafe (Lambda) layers.

    `compile=False` (default) is enough for predicting; `compile=True` also restores the
    loss and the `DataLoss` metric (the custom classes are registered by the imports above).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found: run `dvc repro train` first")
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


# Keras stamps every `.keras` archive with the time of saving (zip entry times and
# `metadata.json` "date_saved") and numbers shared objects by their memory address
# (`id()`) in `config.json`; the weights file inside is already reproducible.
UNRECORDED_DATE = "unrecorded"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _renumber_shared_objects(node: Any, numbers: dict[int, int]) -> Any:
    """Replace `shared_object_id` values (memory addresses) by 1, 2, ... in order of appearance."""
    if isinstance(node, dict):
        return {
            key: (
                numbers.setdefault(value, len(numbers) + 1)
                if key == "shared_object_id"
                else _renumber_shared_objects(value, numbers)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared_objects(value, numbers) for value in node]
    return node


def make_reproducible(path: str | Path) -> None:
    """Rewrite a saved `.keras` archive so that the same model always gives the same bytes.

    Fixed zip entry times, "date_saved" set to "unrecorded", shared-object numbers in
    order of appearance (a consistent renaming, so shared objects stay shared on load).
    The time a model was trained is recorded by its MLflow run instead.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "date_saved": UNRECORDED_DATE}).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            archive.writestr(fixed, data)
