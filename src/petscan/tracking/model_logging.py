"""Logging the trained Keras classifier into its MLflow run as a pyfunc, and registering it.

Only the train stage logs a model; the stages after it (evaluate, explain, plot) do not
import this module, so they do not depend on the pyfunc model (`petscan.serving.pyfunc`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from petscan.serving import pyfunc

if TYPE_CHECKING:
    from petscan.params.learning import ModelParams
    from petscan.params.results import MlflowParams


def pip_requirements() -> list[str]:
    """The installed versions of what the pyfunc needs (plus the petscan package itself)."""
    names = ["mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "pillow"]
    pins = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name)}")
    return pins


def log_keras_model(
    model_path: str | Path,
    mlflow_params: MlflowParams,
    class_names: Sequence[str],
    model_params: ModelParams,
    input_example: Any = None,
    name: str = "model",
    max_pixels: int | None = None,
    min_side: int | None = None,
    max_aspect: float | None = None,
):
    """Log a `.keras` classifier as a pyfunc into the active run and register it.

    Logged as MLflow "models from code" (`petscan/serving/pyfunc_code.py`, see
    `petscan.serving.pyfunc`) with the Keras file as the artifact `keras_model`
    (`artifacts/model.keras`). `input_example`: image paths (or a DataFrame with
    `path`/`image` columns) that exist now; MLflow predicts on them to check the model.
    `max_pixels`, `min_side`, `max_aspect` (`split`'s image rules; None: `max_pixels` no
    limit, the others the schema's default): an image that split would refuse is answered
    with an error. Registered under `mlflow_params.registered_model` unless that is empty.
    Returns the ModelInfo.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path} not found: train the model first (`dvc repro train`)"
        )
    model_config = {
        "class_names": list(class_names),
        "input_size": list(model_params.input_size),
        "resize": model_params.resize,
        "backbone": model_params.backbone,
        "preprocessing": model_params.preprocessing,
        "max_pixels": max_pixels,
        **_shape_rules(min_side, max_aspect),
    }
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(pyfunc.CODE_FILE),
        artifacts={pyfunc.KERAS_ARTIFACT: str(model_path)},
        model_config=model_config,
        signature=pyfunc.model_signature(class_names),
        input_example=pyfunc.example_frame(input_example),
        pip_requirements=pip_requirements(),
        metadata={"petscan": "requires the petscan package (pip install -e <repo>)"},
        registered_model_name=mlflow_params.registered_model or None,
    )


def _shape_rules(min_side: int | None, max_aspect: float | None) -> dict[str, Any]:
    """`min_side` and `max_aspect` for the model config (the schema's default for None)."""
    from petscan.params.inputs import SplitParams  # the defaults: only for a model logged

    defaults = SplitParams()
    return {
        "min_side": defaults.min_side if min_side is None else min_side,
        "max_aspect": defaults.max_aspect if max_aspect is None else max_aspect,
    }
