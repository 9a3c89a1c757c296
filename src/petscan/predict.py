"""`petscan predict`: class probabilities for image files or folders.

    petscan predict scans/ one.png --model models/model.keras [--csv out.csv]
    petscan predict scans/ --model-uri models:/pet-classifier/1

Where the class names, input size and resize mode come from:

- `--model-uri` (an MLflow model logged by `tracking.log_keras_model`): the model's
  own config (`class_names`, `input_size`, `resize`), so params.yaml is not needed.
  Only its `.keras` file is loaded (safe mode) and its `MLmodel` read as YAML: nothing
  from the store is unpickled unless `--trust-store` is given.
- `--model` (a `.keras` file): the input size from the model's input shape; class
  names from `data.classes` and the resize mode from `model.resize` in `--params`.

Unreadable files are reported on stderr with the reason and skipped. The exit code
is 0 when at least one image was predicted, 1 when none was, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from petscan import config
from petscan.images import ImageError, list_images, load_resized
from petscan.io import write_csv

DEFAULT_BATCH = 32


@dataclass
class LoadedModel:
    """A Keras classifier with what it needs to read images."""

    keras_model: object
    class_names: list[str]
    input_size: tuple[int, int]
    resize: str
    source: str


def _load_keras(path: str | Path):
    """`petscan.model.load_model` (custom layers registered) or plain Keras, safe mode."""
    try:
        from petscan.model import load_model
    except ImportError:
        import keras

        return keras.models.load_model(path, safe_mode=True)
    return load_model(path)


def expand_paths(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files from files and folders (folders recursively); missing paths as errors."""
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                errors.append((str(item), "folder holds no image files"))
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            errors.append((str(item), "no such file or folder"))
    return files, errors


def predict_paths(
    model,
    paths: Sequence[str | Path],
    class_names: Sequence[str],
    input_size: Sequence[int],
    resize: str = "stretch",
    batch_size: int = DEFAULT_BATCH,
    errors: list[tuple[str, str]] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Probabilities per class and `predicted_class` for each readable image.

    `model` is a Keras model taking float32 (N, H, W, 3) in [0, 255]. Unreadable files
    raise `ImageError`, unless `errors` is a list: then (path, reason) is appended to it
    and the file is skipped.
    """
    size = (int(input_size[0]), int(input_size[1]))
    names = list(class_names)
    rows: list[str] = []
    blocks: list[np.ndarray] = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", disable=not progress):
        images, kept = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(load_resized(path, size, resize))
            except ImageError as err:
                if errors is None:
                    raise
                errors.append((str(path), err.reason))
                continue
            kept.append(Path(path).as_posix())
        if images:
            blocks.append(model.predict(np.stack(images), verbose=0))
            rows.extend(kept)
    frame = probabilities_frame(
        np.concatenate(blocks) if blocks else np.zeros((0, len(names))), names
    )
    frame.insert(0, "path", rows)
    return frame


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


def _model_input_size(keras_model) -> tuple[int, int] | None:
    shape = getattr(keras_model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def load_from_file(path: str | Path, params_path: str | Path) -> LoadedModel:
    """A `.keras` file; class names and resize from params, input size from the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train a model first (`dvc repro`)")
    params = config.load_params(params_path)
    model_params = params.get("model", {})
    keras_model = _load_keras(path)
    size = _model_input_size(keras_model) or tuple(model_params["input_size"])
    return LoadedModel(
        keras_model,
        config.class_names(params["data"]),
        (int(size[0]), int(size[1])),
        model_params.get("resize", "stretch"),
        str(path),
    )


def load_from_uri(
    uri: str, params_path: str | Path | None = None, trust_store: bool = False
) -> LoadedModel:
    """A model logged by `tracking.log_keras_model`, with its own config.

    By default nothing from the store is unpickled: the model's files are downloaded, the
    `.keras` artifact is loaded in Keras' safe mode and the config is read from the
    `MLmodel` file as plain YAML. `trust_store=True` loads the MLflow pyfunc instead,
    which unpickles its Python object (runs code from the store): only for a store you
    control.
    """
    import mlflow

    from petscan import tracking

    mlflow_params: dict = {}
    if params_path is not None and Path(params_path).is_file():
        mlflow_params = config.load_params(params_path).get("mlflow") or {}
    tracking.use_store(mlflow_params)
    if not trust_store:
        return load_keras_artifact(uri)
    pyfunc = mlflow.pyfunc.load_model(uri)
    inner = pyfunc.unwrap_python_model()
    if not isinstance(inner, tracking.PetscanKerasModel):
        raise TypeError(f"{uri} is not a petscan model (logged by tracking.log_keras_model)")
    return LoadedModel(inner.keras_model, inner.class_names, inner.input_size, inner.resize, uri)


def load_keras_artifact(uri: str) -> LoadedModel:
    """The `.keras` file inside a logged model (its pyfunc artifact `keras_model`), loaded
    with `safe_mode=True`; class names, input size and resize from the model config in
    the `MLmodel` file (`yaml.safe_load`). Nothing is unpickled."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="petscan-model-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        mlmodel = folder / "MLmodel"
        if not mlmodel.is_file():
            raise ValueError(f"{uri} is not an MLflow model (no MLmodel file)")
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        pyfunc = flavor.get("python_function") or {}
        settings = pyfunc.get(mlflow.pyfunc.MODEL_CONFIG) or {}  # the "config" key
        missing = [k for k in ("class_names", "input_size") if k not in settings]
        if missing:
            raise ValueError(
                f"{uri} is not a petscan model (logged by tracking.log_keras_model): its "
                f"model_config lacks {missing}"
            )
        keras_model = _load_keras(_keras_artifact(folder, pyfunc, uri))
    size = [int(v) for v in settings["input_size"]]
    return LoadedModel(
        keras_model,
        [str(c) for c in settings["class_names"]],
        (size[0], size[1]),
        str(settings.get("resize", "stretch")),
        uri,
    )


def _keras_artifact(folder: Path, pyfunc: dict, uri: str) -> Path:
    """The `keras_model` artifact's file, which must lie inside the downloaded model."""
    entry = (pyfunc.get("artifacts") or {}).get("keras_model") or {}
    relative = entry.get("path") if isinstance(entry, dict) else None
    candidates = [folder / str(relative)] if relative else sorted(folder.rglob("*.keras"))
    inside = [p for p in candidates if p.resolve().is_relative_to(folder.resolve()) and p.is_file()]
    if len(inside) != 1 or inside[0].suffix != ".keras":
        raise ValueError(
            f"{uri} holds no single .keras artifact inside the model (found "
            f"{[str(p.relative_to(folder)) for p in inside] or 'none'}); a model logged by "
            "tracking.log_keras_model has one"
        )
    return inside[0]


def format_table(frame: pd.DataFrame, digits: int = 4) -> str:
    if frame.empty:
        return "(no predictions)"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petscan predict",
        description="Class probabilities for PET image files or folders (research use only).",
    )
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .keras model file, e.g. models/model.keras")
    source.add_argument("--model-uri", help="an MLflow model URI, e.g. models:/pet-classifier/1")
    parser.add_argument("--csv", help="write the table to this CSV file instead of printing it")
    parser.add_argument("--params", default=config.PARAMS_FILE, help="params.yaml to read")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument(
        "--trust-store",
        action="store_true",
        help="--model-uri: load the MLflow pyfunc, which unpickles code from the store "
        "(default: only the .keras file, in safe mode); only for a store you control",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files, errors = expand_paths(args.paths)
    try:
        if args.model:
            loaded = load_from_file(args.model, args.params)
        else:
            loaded = load_from_uri(args.model_uri, args.params, trust_store=args.trust_store)
    except Exception as err:  # a CLI boundary: any failure to load is reported, not traced
        print(f"petscan predict: cannot load the model: {err}", file=sys.stderr)
        return 2
    frame = predict_paths(
        loaded.keras_model,
        files,
        loaded.class_names,
        loaded.input_size,
        loaded.resize,
        batch_size=args.batch_size,
        errors=errors,
        progress=len(files) > args.batch_size,
    )
    for path, reason in errors:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, frame)
        print(f"wrote {len(frame)} predictions to {args.csv}", file=sys.stderr)
    else:
        print(format_table(frame))
    if frame.empty:
        print("petscan predict: no image could be predicted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
