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

Files that `split` would refuse (unreadable, larger than `split.max_pixels`, smaller than
`split.min_side`, more elongated than `split.max_aspect`, blank or all NaN: the one rule
of `images.read_image`), names that are not valid UTF-8 and links that loop are reported
on stderr with the reason and skipped. The model, the class names and the `--csv` path
are checked before any image is predicted. Exit code: 0 when at least one image was
predicted, 1 when none was or the model, params or `--csv` path cannot be used (one line),
2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from petscan.data.folders import is_utf8, printable, scan_images
from petscan.data.images import ImageError, ImageRules, read_image, resize
from petscan.params.loading import PARAMS_FILE, load_section, load_sections
from petscan.params.schema import defaults
from petscan.utils import errors as errors_  # `errors` names the skipped files below
from petscan.utils import logs
from petscan.utils.errors import BadInputError, MissingInputError, UserError
from petscan.utils.io import write_csv

# MLflow and TensorFlow (model.network, tracking, serving.pyfunc) are imported in the functions
# that load a model, not here: `petscan predict --help` then answers in about 1 s, not 11 s.

DEFAULT_BATCH = 32


@dataclass
class LoadedModel:
    """A Keras classifier with what it needs to read images."""

    keras_model: object
    class_names: list[str]
    input_size: tuple[int, int]
    resize: str
    source: str


def expand_paths(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files from files and folders (folders recursively); missing paths as errors."""
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found, problems = scan_images(item)
            errors.extend((p["path"], p["reason"]) for p in problems)
            if not found:
                errors.append((str(item), "folder holds no image files"))
            files.extend(found)
        elif not is_utf8(item):
            errors.append((str(item), "the path is not valid UTF-8 (shown with \\x escapes)"))
        elif item.is_symlink() and not item.exists():
            errors.append((str(item), "broken symbolic link, or a loop of links"))
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
    rules: ImageRules | None = None,
) -> pd.DataFrame:
    """Probabilities per class and `predicted_class` for each readable image.

    `model` is a Keras model taking float32 (N, H, W, 3) in [0, 255]. Files that `rules`
    refuse (`images.read_image`; default: no size limits) raise `ImageError`, unless
    `errors` is a list: then (path, reason) is appended to it and the file is skipped.
    """
    rules = ImageRules() if rules is None else rules
    from petscan.serving.pyfunc import probabilities_frame

    size = (int(input_size[0]), int(input_size[1]))
    names = list(class_names)
    rows: list[str] = []
    blocks: list[np.ndarray] = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", disable=not progress):
        images, kept = [], []
        for path in paths[start : start + batch_size]:
            try:
                rgb = read_image(path, rules)[0]
                images.append(_resize(rgb, size, resize).astype(np.float32))
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


_resize = resize  # `resize` is also a parameter name of predict_paths


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
        raise MissingInputError(f"{path} not found: train a model first (`dvc repro`)")
    params = load_sections(("data", "model"), params_path)
    keras_model = load_keras_file(path)
    size = _model_input_size(keras_model) or params.model.input_size
    return LoadedModel(
        keras_model, params.data.class_names, (size[0], size[1]), params.model.resize, str(path)
    )


def load_keras_file(path: Path):
    """A `.keras` file loaded in safe mode; `BadInputError` says why a file is not a model."""
    from petscan.model.saving import load_model

    size = path.stat().st_size
    if size == 0:
        raise BadInputError(f"{path} is not a valid Keras model: it is an empty file")
    if not zipfile.is_zipfile(path):
        raise BadInputError(
            f"{path} is not a valid Keras model: a .keras file is a zip archive, this is "
            f"{size} bytes of something else (truncated, or another format)"
        )
    try:
        return load_model(path)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{path} is not a valid Keras model ({reason})") from err


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
    from petscan.serving.loading import load_petscan_model
    from petscan.tracking import store

    mlflow_params = (
        load_section("mlflow", params_path)
        if params_path is not None and Path(params_path).is_file()
        else defaults().mlflow
    )
    store.use_store(mlflow_params)
    if not trust_store:
        return load_keras_artifact(uri)
    _, inner = load_petscan_model(uri)
    return LoadedModel(inner.keras_model, inner.class_names, inner.input_size, inner.resize, uri)


def load_keras_artifact(uri: str) -> LoadedModel:
    """The `.keras` file inside a logged model (its pyfunc artifact `keras_model`), loaded
    with `safe_mode=True`; class names, input size and resize from the model config in
    the `MLmodel` file (`yaml.safe_load`). Nothing is unpickled."""
    import mlflow

    from petscan.model.saving import load_model

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
        keras_model = load_model(_keras_artifact(folder, pyfunc, uri))
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
    parser.add_argument("--params", default=PARAMS_FILE, help="params.yaml to read")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument(
        "--trust-store",
        action="store_true",
        help="--model-uri: load the MLflow pyfunc, which unpickles code from the store "
        "(default: only the .keras file, in safe mode); only for a store you control",
    )
    return parser


def check_csv_path(path: str | Path) -> None:
    """Refuse an output path that cannot be written, before any image is predicted."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--csv {path} is a folder: give a file name, e.g. {path}/predictions.csv")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"--csv {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--csv {path}: the folder {parent} is not writable")


def check_classes(loaded: LoadedModel) -> None:
    """The model's output size must match the class names (before predicting anything)."""
    shape = getattr(loaded.keras_model, "output_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    outputs = shape[-1] if shape else None
    if outputs is not None and outputs != len(loaded.class_names):
        raise UserError(
            f"the model {loaded.source} outputs {outputs} classes but {len(loaded.class_names)} "
            f"class names were given ({loaded.class_names}): check data.classes in the params "
            "file (--params) against the data the model was trained on"
        )


def image_rules(params_path: str | Path) -> ImageRules:
    """The `split` section's image rules from the params file (defaults without one)."""
    split = load_section("split", params_path) if Path(params_path).is_file() else defaults().split
    return ImageRules.from_params(split)


@errors_.reports_user_errors("petscan predict")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.csv:
        check_csv_path(args.csv)
    rules = image_rules(args.params)
    files, errors = expand_paths(args.paths)
    logs.import_tensorflow()
    if args.model:
        loaded = load_from_file(args.model, args.params)
    else:
        try:
            loaded = load_from_uri(args.model_uri, args.params, trust_store=args.trust_store)
        except UserError:
            raise
        except Exception as err:  # MLflow's many ways to say the URI does not work
            raise UserError(f"cannot load the model {args.model_uri}: {err}") from err
    check_classes(loaded)
    frame = predict_paths(
        loaded.keras_model,
        files,
        loaded.class_names,
        loaded.input_size,
        loaded.resize,
        batch_size=args.batch_size,
        errors=errors,
        progress=len(files) > args.batch_size,
        rules=rules,
    )
    for path, reason in errors:
        print(f"skipped {printable(path)}: {reason}", file=sys.stderr)
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
