"""The MLflow pyfunc model: image files or image bytes in, class probabilities out, per row.

The train stage logs it (`tracking.model_logging.log_keras_model`) as MLflow "models from
code": the logged Python file is `pyfunc_code.py` (one `set_model(PetscanKerasModel())`
line, nothing pickled), the network is the artifact `keras_model` (`artifacts/model.keras`
inside the logged model, loaded with `safe_mode=True`) and the model config holds
`class_names`, `input_size`, `resize` and the image rules of `split` (`max_pixels`,
`min_side`, `max_aspect`; a model logged without a rule takes the schema's default).

Input, a DataFrame (JSON `dataframe_split` when served) with one or both columns:

- `path`: an image file readable by the process that runs the model;
- `image`: the bytes of an image file, base64-encoded (a `data:...;base64,` prefix and
  line breaks are allowed): PNG, JPEG, 16-bit grey, RGBA, ... as the `split` stage accepts
  (the same rule, `images.read_image`: a file split refuses is a bad row).

A row uses `image` when it has one, else `path`. Output: one row per input row, in order:
one probability column per class, `predicted_class`, and `error`, which is empty for a
good row (None; JSON null) and a one-line reason for a bad one, whose probabilities and
class are None (JSON null: strict JSON parsers reject NaN, so no answer ever holds one). A bad
row never fails the batch; no stack trace is ever part of an answer.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from petscan.data.images import ImageError, ImageRules, read_image, resize
from petscan.model.saving import load_model

INPUT_COLUMNS = ("path", "image")
ERROR_COLUMN = "error"
KERAS_ARTIFACT = "keras_model"
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
RULE_KEYS = ("max_pixels", "min_side", "max_aspect")  # split's image rules, in the model config


def probabilities_frame(proba: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One probability column per class, then `predicted_class` (the most probable)."""
    names = list(class_names)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(names):
        raise ValueError(
            f"the model outputs {proba.shape[-1]} classes but {len(names)} class names "
            f"were given ({names}); check data.classes in params.yaml"
        )
    frame = pd.DataFrame(proba, columns=names)
    frame["predicted_class"] = [names[i] for i in proba.argmax(axis=1)]
    return frame


def decode_base64(text: str) -> bytes:
    """The bytes of a base64 string; a `data:<type>;base64,` prefix and whitespace are ignored."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not valid base64 ({err})") from err


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def read_row(
    path: Any, image: Any, row: int, rules: ImageRules
) -> tuple[np.ndarray | None, str | None]:
    """(RGB uint8 array, None) for a usable row, (None, one-line reason) for a bad one."""
    try:
        if _present(image):
            try:
                data = image if isinstance(image, bytes) else decode_base64(str(image))
            except ValueError as err:
                return None, f"row {row} image: {err}"
            return read_image(data, rules, f"row {row} image")[0], None
        if _present(path) and str(path):
            file = Path(str(path))
            if file.is_dir():
                return None, f"{file}: is a folder, not an image file"
            if not file.exists():
                return None, f"{file}: no such file (paths are read by the model's process)"
            return read_image(file, rules)[0], None
        return None, f"row {row}: neither 'path' nor 'image' given"
    except (ImageError, ValueError) as err:
        return None, str(err)


def logged_rules(config: Mapping[str, Any]) -> ImageRules:
    """The image rules of `split` logged in a model's config; a rule the model was logged
    without takes the schema's default."""
    from petscan.params.schema import section  # pydantic: only when a model is loaded

    split = section("split", {k: config[k] for k in RULE_KEYS if k in config})
    return ImageRules.from_params(split)


class PetscanKerasModel(mlflow.pyfunc.PythonModel):
    """A `.keras` image classifier (float32 (N, H, W, 3) in [0, 255] -> probabilities).

    `predict` takes the DataFrame described in the module docstring, or a float32 array
    (N, H, W, 3) of already resized images (arrays bypass the logged signature: call
    `loaded.unwrap_python_model().predict(None, x)`).
    """

    batch_size = 32

    def load_context(self, context):
        self.config = dict(context.model_config or {})
        self.class_names = list(self.config["class_names"])
        self.input_size = tuple(int(v) for v in self.config["input_size"])
        self.resize = self.config.get("resize", "stretch")
        self.rules = logged_rules(self.config)
        self.keras_model = load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # (arrays are accepted too; the DataFrame hint only tells MLflow not to infer a schema)
        if not isinstance(model_input, pd.DataFrame):
            return self.predict_array(np.asarray(model_input, dtype=np.float32))
        if not set(INPUT_COLUMNS) & set(model_input.columns):
            raise MlflowException.invalid_parameter_value(
                "the input needs a 'path' column (image files) or an 'image' column "
                "(base64-encoded image files)"
            )
        n = len(model_input)
        paths = model_input["path"] if "path" in model_input else [None] * n
        images = model_input["image"] if "image" in model_input else [None] * n
        arrays, kept, errors = [], [], [None] * n
        for row, (path, image) in enumerate(zip(paths, images, strict=True)):
            rgb, errors[row] = read_row(path, image, row, self.rules)
            if rgb is not None:
                arrays.append(resize(rgb, self.input_size, self.resize).astype(np.float32))
                kept.append(row)
        proba = np.zeros((n, len(self.class_names)))  # bad rows: None in `result_frame`
        if arrays:
            proba[kept] = self.keras_model.predict(
                np.stack(arrays), batch_size=self.batch_size, verbose=0
            )
        return result_frame(proba, self.class_names, errors)

    def predict_array(self, x: np.ndarray) -> pd.DataFrame:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {x.shape}")
        proba = self.keras_model.predict(x, batch_size=self.batch_size, verbose=0)
        return result_frame(proba, self.class_names, [None] * len(x))


NOT_FINITE = "the model returned a probability that is not a finite number"


def result_frame(
    proba: np.ndarray, class_names: Sequence[str], errors: Sequence[str | None]
) -> pd.DataFrame:
    """Probabilities per class, `predicted_class` and `error` (rows with an error: None).

    A row whose probabilities are not all finite is a bad row too. When there is a bad row,
    the probability columns hold Python floats and None (object dtype), so the answer's JSON
    has `null` where a float column would give `NaN`, which strict JSON parsers reject.
    """
    proba = np.asarray(proba, dtype=np.float64)
    finite = np.isfinite(proba).all(axis=1) if proba.ndim == 2 else np.ones(len(errors), bool)
    errors = [e or (None if ok else NOT_FINITE) for e, ok in zip(errors, finite, strict=True)]
    frame = probabilities_frame(np.where(np.isfinite(proba), proba, 0.0), class_names)
    predicted = [None if e else c for c, e in zip(frame["predicted_class"], errors, strict=True)]
    # object columns keep None (JSON null); a float or string dtype would turn it into NaN
    if any(errors):
        for name in class_names:
            values = [None if e else float(v) for v, e in zip(frame[name], errors, strict=True)]
            frame[name] = pd.Series(values, dtype=object)
    frame["predicted_class"] = pd.Series(predicted, dtype=object)
    frame[ERROR_COLUMN] = pd.Series(list(errors), dtype=object)
    return frame


def model_signature(class_names: Sequence[str]) -> ModelSignature:
    """Input: optional `path` and `image` (base64) strings; output: probabilities, class, error."""
    inputs = Schema([ColSpec("string", name, required=False) for name in INPUT_COLUMNS])
    outputs = Schema(
        [ColSpec("double", c) for c in class_names]
        + [ColSpec("string", "predicted_class"), ColSpec("string", ERROR_COLUMN, required=False)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_frame(input_example: Any) -> pd.DataFrame | None:
    """An input example: the given image paths, plus one row of `image` bytes.

    The bytes are a small grey ramp PNG made here (64 x 64, which the default image rules
    accept), so no patient image is copied into the logged model.
    """
    if input_example is None or isinstance(input_example, pd.DataFrame):
        return input_example
    if isinstance(input_example, (str, Path)):
        input_example = [input_example]
    paths = [str(p) for p in input_example]
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).save(
        buffer, format="PNG"
    )
    blank = base64.b64encode(buffer.getvalue()).decode("ascii")
    return pd.DataFrame({"path": [*paths, None], "image": [*[None] * len(paths), blank]})
