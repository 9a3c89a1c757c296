"""`petscan explain`: Grad-CAM overlays of image files, and an index CSV.

    petscan explain scans/ --model models/model.keras --out overlays/
    petscan explain scan.png --model-uri models:/pet-classifier@candidate --out o/ --class all

For each image (folders are searched recursively) and each explained class, an overlay PNG
of the heatmap on the image as given (`<folders>/<stem>_<class>.png` under `--out`) and one
row of `explanations.csv`: the class, its probability, the heatmap's peak in the file's own
pixels, whether the heatmap is empty, the predicted class. Unreadable files are skipped and
named on stderr; the exit code is 1 when no image could be explained.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from petscan.data.images import ImageError, load_rgb
from petscan.evaluation.gradcam import METHODS, TARGETS, explain_images, explainer_for
from petscan.evaluation.overlay import overlay, slug, write_png
from petscan.params.loading import PARAMS_FILE
from petscan.serving import predict
from petscan.utils.errors import UserError, reports_user_errors
from petscan.utils.io import write_csv

INDEX_FILE = "explanations.csv"
INDEX_COLUMNS = (
    "file", "class", "probability", "peak_col", "peak_row", "empty", "predicted_class",
    "method", "overlay",
)  # fmt: skip


def resolve_target(value: str, class_names: Sequence[str]) -> str | int:
    """`--class`: 'predicted', 'all' or a class name (case-insensitive) -> explain target."""
    if value in TARGETS:
        return value
    lowered = [name.lower() for name in class_names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    raise ValueError(
        f"unknown class {value!r}: use 'predicted', 'all' or one of {list(class_names)}"
    )


def _inputs(paths: Sequence[str]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(file, name relative to its input) pairs, and inputs that are missing or empty."""
    files: list[tuple[Path, Path]] = []
    errors: list[tuple[str, str]] = []
    for item in map(Path, paths):
        found, missing = predict.expand_paths([item])
        errors += missing
        root = item if item.is_dir() else item.parent
        files += [(file, file.relative_to(root)) for file in found]
    return files, errors


def _overlay_name(relative: Path, class_name: str, taken: set[Path]) -> Path:
    """`<folders>/<stem>_<class>.png`, made unique within one run."""
    base = relative.with_name(f"{relative.stem}_{slug(class_name)}")
    name, k = base.with_suffix(".png"), 1
    while name in taken:
        k += 1
        name = base.with_name(f"{base.name}-{k}").with_suffix(".png")
    taken.add(name)
    return name


def explain_files(
    loaded: Any,
    files: Sequence[tuple[Path, Path]],
    out_dir: str | Path,
    method: str = "gradcam",
    target: str | int = "predicted",
    batch_size: int = 8,
    alpha: float = 0.45,
    errors: list[tuple[str, str]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Overlay PNGs of `files` ((path, name relative to its input)) into `out_dir`.

    `loaded` is a `predict.LoadedModel`. Files are decoded, explained and written
    `batch_size` at a time, so memory does not grow with the folder. Unreadable files are
    appended to `errors` as (path, reason) and skipped. Returns the index rows.
    """
    out_dir = Path(out_dir)
    errors = [] if errors is None else errors
    names = list(loaded.class_names)
    rows: list[dict[str, Any]] = []
    taken: set[Path] = set()
    step = max(1, batch_size)
    with tqdm(total=len(files), unit="img", desc="explain", disable=not progress) as bar:
        for start in range(0, len(files), step):
            chunk, decoded = files[start : start + step], []
            for path, relative in chunk:
                try:
                    decoded.append((path, relative, load_rgb(path)))
                except ImageError as err:
                    errors.append((str(path), err.reason))
            if decoded:
                results = explain_images(
                    loaded.keras_model,
                    [rgb for _, _, rgb in decoded],
                    loaded.resize,
                    method,
                    target,
                    batch_size=step,
                )
                per_image = len(results) // len(decoded)
                for i, (path, relative, rgb) in enumerate(decoded):
                    for result in results[i * per_image : (i + 1) * per_image]:
                        name = _overlay_name(relative, names[result.class_index], taken)
                        write_png(out_dir / name, overlay(rgb, result.heatmap, alpha))
                        rows.append(
                            {
                                "file": Path(path).as_posix(),
                                "class": names[result.class_index],
                                "probability": result.probability,
                                "peak_col": result.peak[0],
                                "peak_row": result.peak[1],
                                "empty": result.empty,
                                "predicted_class": names[int(np.argmax(result.probabilities))],
                                "method": method,
                                "overlay": name.as_posix(),
                            }
                        )
            bar.update(len(chunk))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petscan explain",
        description="Grad-CAM heatmaps of the classifier's predictions, overlaid on each "
        "image as given, with an index CSV (research use only).",
    )
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .keras model file, e.g. models/model.keras")
    source.add_argument("--model-uri", help="an MLflow model URI, e.g. models:/pet-classifier/1")
    parser.add_argument("--out", required=True, help="folder for the overlays and the index CSV")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument(
        "--class",
        dest="target",
        default="predicted",
        help="the class to explain: a class name, 'predicted' (default) or 'all'",
    )
    parser.add_argument("--alpha", type=float, default=0.45, help="overlay opacity at full heat")
    parser.add_argument("--params", default=PARAMS_FILE, help="params.yaml to read")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


@reports_user_errors("petscan explain")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files, errors = _inputs(args.paths)
    try:
        if args.model:
            loaded = predict.load_from_file(args.model, args.params)
        else:
            loaded = predict.load_from_uri(args.model_uri, args.params)
        target = resolve_target(args.target, loaded.class_names)
        explainer_for(loaded.keras_model)  # fails here, clearly, on a model it cannot explain
    except UserError:
        raise
    except Exception as err:  # a CLI boundary: MLflow's and Keras' many ways to fail to load
        raise UserError(" ".join(str(err).split())) from None
    rows = explain_files(
        loaded,
        files,
        args.out,
        args.method,
        target,
        args.batch_size,
        args.alpha,
        errors,
        progress=len(files) > 1,
    )
    for path, reason in errors:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    index = Path(args.out) / INDEX_FILE
    write_csv(index, pd.DataFrame(rows, columns=list(INDEX_COLUMNS)))
    print(f"explained {len(rows)} image(s) x class(es) into {args.out}; index: {index}")
    if not rows:
        print("petscan explain: no image could be explained", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
