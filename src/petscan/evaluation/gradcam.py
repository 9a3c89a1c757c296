"""Grad-CAM and Grad-CAM++ heatmaps: where in an image the classifier's evidence lies.

    explanations = explain_images(model, [rgb, ...], params["model"])
    overlay(rgb, explanations[0].heatmap)  # RGB uint8, the size of `rgb`

The model is the project's full image -> probabilities model (`models/model.keras`,
`build_full_model`): some layers (pre-processing), a backbone (a nested `keras.Model`),
then any layers after it (pooling, the head, whatever the head holds). The target is the
backbone's output feature map `A` (B, h, w, C), found from the model's structure, never by
layer name: the last nested model with a 4-D output, or else the last layer with a 4-D
output. The layers after it are applied as the model itself wires them (a sub-model from
`A` to the output), so a changed head needs no change here.

The explained score is `log p_c`, the log-probability of class `c` (a logit up to a term
shared by every class). Grad-CAM weights each channel by the mean gradient of the score
over the map (Selvaraju et al. 2017); Grad-CAM++ weights the positive gradients by
`g^2 / (2 g^2 + sum(A) g^3)` (Chattopadhay et al. 2018, eq. 19, with `Y = exp(S) = p_c`).
The map is `relu(sum_k w_k A_k)`, scaled to [0, 1] by its maximum (all zeros when no
evidence is positive).

The map lives on the feature grid of the model input (e.g. 5 x 5 for InceptionResNetV2 at
224 x 224); `to_image_grid` samples it bilinearly at every pixel of the original file,
through the exact geometry of `images.resize` (`stretch`, or `pad`'s centred box), so
peaks and overlays are in the file's own pixel coordinates. Only the layers after the
backbone are differentiated, so explaining costs about one prediction.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib import colormaps
from PIL import Image
from tqdm.auto import tqdm

from petscan.data.images import ImageError, content_box, load_rgb, resize
from petscan.params import loading as config
from petscan.serving import predict
from petscan.utils.errors import UserError, reports_user_errors
from petscan.utils.io import atomic_path, write_csv

METHODS = ("gradcam", "gradcam++")
TARGETS = ("predicted", "all")
PREDICTED = -1  # class code meaning "the most probable class of this image"
DEFAULT_COLORMAP = "jet"


@dataclass
class Explanation:
    """The explanation of one class for one image.

    `heatmap` is float32 (H, W) in [0, 1] on the original image's pixel grid; `peak` is
    (col, row) of its maximum in that grid (the centre of the first maximal pixel).
    """

    probabilities: np.ndarray  # (num_classes,) float
    class_index: int  # the class the heatmap explains
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], the original image's pixel grid
    peak: tuple[int, int]  # (col, row) of the heatmap maximum, original pixel grid
    method: str = "gradcam"

    @property
    def probability(self) -> float:
        """The probability of the explained class."""
        return float(self.probabilities[self.class_index])

    @property
    def empty(self) -> bool:
        """True when no positive evidence was found (the heatmap is all zeros)."""
        return not bool(np.any(self.heatmap > 0))


# ----------------------------------------------------------------------------- the model


def _outer_node_output(model: keras.Model, layer: keras.Layer) -> keras.KerasTensor | None:
    """The symbolic output of `layer` in `model`'s own graph (not in a nested one).

    Keras 3 has no public accessor for the output of a nested model *as called by* the outer
    model (`layer.output` of a nested model is its inner graph's output), so the outer
    graph's nodes are searched.
    """
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001 (see docstring)
        for node in nodes:
            if node.operation is layer and len(node.outputs) == 1:
                return node.outputs[0]
    return None


def find_target(model: keras.Model) -> tuple[keras.Layer, keras.KerasTensor]:
    """The layer whose 4-D output Grad-CAM explains, and that output in `model`'s graph.

    The last nested `keras.Model` with a 4-D output (the backbone); without one, the last
    layer with a 4-D output. Raises ValueError when the model has no such layer.
    """
    candidates: list[tuple[keras.Layer, keras.KerasTensor]] = []
    nested: list[tuple[keras.Layer, keras.KerasTensor]] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out = _outer_node_output(model, layer)
        if out is None or len(out.shape) != 4:
            continue
        candidates.append((layer, out))
        if isinstance(layer, keras.Model):
            nested.append((layer, out))
    if nested:
        return nested[-1]
    if candidates:
        return candidates[-1]
    raise ValueError(
        f"model {model.name!r} has no layer with a 4-D (feature map) output to explain; "
        "Grad-CAM needs a convolutional backbone"
    )


class Explainer:
    """Grad-CAM / Grad-CAM++ for one image -> probabilities model (built once, reused).

    `explain_batch` takes a float32 (B, H, W, 3) batch of model inputs; `explain_images`
    (module level) is the convenient entry point for decoded files of any size.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.layer, feature_map = find_target(model)
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
        self.features = keras.Model(inputs, feature_map, name="explain_features")
        self.head = keras.Model(feature_map, outputs, name="explain_head")
        self.input_size = tuple(int(v) for v in model.input_shape[1:3])
        self.feature_size = tuple(int(v) for v in feature_map.shape[1:3])
        self.num_classes = int(self.head.output_shape[-1])
        self._fns: dict[int, Any] = {}  # one traced graph per number of classes explained

    def _fn(self, images: tf.Tensor, classes: tf.Tensor, plus: tf.Tensor):
        count = int(classes.shape[1])
        if count not in self._fns:
            signature = [
                tf.TensorSpec((None, *self.input_size, 3), tf.float32),
                tf.TensorSpec((None, count), tf.int32),
                tf.TensorSpec((), tf.bool),
            ]
            self._fns[count] = tf.function(self._cams, input_signature=signature)
        return self._fns[count](images, classes, plus)

    def _cams(self, images: tf.Tensor, classes: tf.Tensor, plus: tf.Tensor):
        """Maps (B, T, h, w), probabilities (B, K) and explained classes (B, T)."""
        fmap = self.features(images, training=False)
        proba = tf.cast(self.head(fmap, training=False), tf.float32)
        predicted = tf.argmax(proba, axis=-1, output_type=tf.int32)[:, None]
        classes = tf.where(classes < 0, predicted, classes)
        fmap32 = tf.cast(fmap, tf.float32)
        tiny = np.finfo(np.float32).tiny
        cams = []
        for t in range(classes.shape[1]):  # static: 1, or K for target "all"
            with tf.GradientTape() as tape:
                tape.watch(fmap)
                p = tf.cast(self.head(fmap, training=False), tf.float32)
                chosen = tf.gather(p, classes[:, t], axis=1, batch_dims=1)
                score = tf.reduce_sum(tf.math.log(tf.maximum(chosen, tiny)))
            grads = tf.cast(tape.gradient(score, fmap), tf.float32)
            gradcam_w = tf.reduce_mean(grads, axis=(1, 2))
            g2, g3 = grads**2, grads**3
            denom = 2.0 * g2 + tf.reduce_sum(fmap32, axis=(1, 2), keepdims=True) * g3
            alpha = tf.math.divide_no_nan(g2, denom)
            plus_w = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
            weights = tf.where(plus, plus_w, gradcam_w)
            cams.append(tf.nn.relu(tf.einsum("bhwc,bc->bhw", fmap32, weights)))
        return tf.stack(cams, axis=1), proba, classes

    def explain_batch(
        self, batch: np.ndarray, classes: np.ndarray, method: str = "gradcam"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cams (B, T, h, w) scaled to [0, 1], probabilities (B, K), classes (B, T)).

        `classes` is int (B, T); `PREDICTED` (-1) stands for the image's most probable class.
        """
        check_method(method)
        cams, proba, used = self._fn(
            tf.convert_to_tensor(batch, tf.float32),
            tf.convert_to_tensor(classes, tf.int32),
            tf.constant(method == "gradcam++"),
        )
        cams = cams.numpy()
        peak = cams.max(axis=(2, 3), keepdims=True)
        cams = np.divide(cams, peak, out=np.zeros_like(cams), where=peak > 0)
        return cams.astype(np.float32), proba.numpy().astype(np.float64), used.numpy()


_EXPLAINERS: weakref.WeakKeyDictionary[keras.Model, Explainer] = weakref.WeakKeyDictionary()


def explainer_for(model: keras.Model) -> Explainer:
    """The (cached) `Explainer` of `model`: its graph functions are traced once."""
    explainer = _EXPLAINERS.get(model)
    if explainer is None:
        explainer = _EXPLAINERS[model] = Explainer(model)
    return explainer


# ----------------------------------------------------------------------------- geometry


def _axis_weights(n_image: int, n_input: int, n_feat: int, offset: int, n_box: int) -> np.ndarray:
    """(n_image, n_feat) bilinear weights: image pixel centre -> feature-grid position.

    Pixel `x` of the file sits at input coordinate `offset + (x + 0.5) * n_box / n_image - 0.5`
    (PIL's bilinear resize into the box `images.resize` uses), and input coordinate `i` at
    feature coordinate `(i + 0.5) * n_feat / n_input - 0.5` (cell centres).
    """
    x = np.arange(n_image, dtype=np.float64)
    at_input = offset + (x + 0.5) * n_box / n_image - 0.5
    at_feat = np.clip((at_input + 0.5) * n_feat / n_input - 0.5, 0.0, n_feat - 1)
    low = np.floor(at_feat).astype(int)
    high = np.minimum(low + 1, n_feat - 1)
    frac = at_feat - low
    weights = np.zeros((n_image, n_feat))
    np.add.at(weights, (np.arange(n_image), low), 1.0 - frac)
    np.add.at(weights, (np.arange(n_image), high), frac)
    return weights


def to_image_grid(
    cam: np.ndarray, image_shape: Sequence[int], input_size: Sequence[int], mode: str = "stretch"
) -> np.ndarray:
    """A feature-grid map (h, w) sampled at every pixel of an (H, W) image, float32.

    `input_size` is the model input (height, width) and `mode` the `model.resize` that made
    it from the image; the map is sampled where each image pixel landed in the input.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    left, top, box_w, box_h = content_box(height, width, input_size, mode)
    rows = _axis_weights(height, int(input_size[0]), cam.shape[0], top, box_h)
    cols = _axis_weights(width, int(input_size[1]), cam.shape[1], left, box_w)
    return (rows @ np.asarray(cam, np.float64) @ cols.T).astype(np.float32)


def peak_of(heatmap: np.ndarray) -> tuple[int, int]:
    """(col, row) of the first maximum of a 2-D map."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(col), int(row)


# ----------------------------------------------------------------------------- public API


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {METHODS}")
    return method


def _class_codes(target: str | int, num_classes: int) -> np.ndarray:
    """The classes to explain for every image: (T,) codes, PREDICTED = the top class."""
    if isinstance(target, str) and target not in TARGETS:
        raise ValueError(f"target must be a class index, 'predicted' or 'all'; got {target!r}")
    if target == "predicted":
        return np.array([PREDICTED])
    if target == "all":
        return np.arange(num_classes)
    index = int(target)
    if not 0 <= index < num_classes:
        raise ValueError(f"class index {index} out of range: the model has {num_classes} classes")
    return np.array([index])


def explain_images(
    model: keras.Model,
    images: Sequence[np.ndarray],
    model_params: dict[str, Any],
    method: str = "gradcam",
    target: str | int = "predicted",
    batch_size: int = 8,
    timings: dict[str, float] | None = None,
) -> list[Explanation]:
    """Heatmaps of `images` (decoded RGB uint8 (H, W, 3), any size) in their own pixel grids.

    `model` is the full image -> probabilities model (as saved in `models/model.keras`);
    `model_params` the params.yaml `model` section (its `resize` mode; the input size is
    the model's own). `target` is `"predicted"` (each image's most probable class), a class
    index, or `"all"`: then every class is explained and the list holds
    `num_classes` explanations per image, image-major (image 0's classes 0..K-1, image 1's...).
    """
    check_method(method)
    explainer = explainer_for(model)
    codes = _class_codes(target, explainer.num_classes)
    classes = np.tile(codes, (len(images), 1))
    mode = model_params["resize"]
    nested = explain_classes(model, images, classes, mode, method, batch_size, timings)
    return [explanation for per_image in nested for explanation in per_image]


def explain_classes(
    model: keras.Model,
    images: Sequence[np.ndarray],
    classes: np.ndarray,
    resize_mode: str = "stretch",
    method: str = "gradcam",
    batch_size: int = 8,
    timings: dict[str, float] | None = None,
) -> list[list[Explanation]]:
    """Per image, the explanations of its own classes: `classes` is int (N, T), one row per
    image, `PREDICTED` (-1) for the image's most probable class. One forward pass per image.

    `timings`, when given, gets the seconds spent in each step added to it: `resize_s` (to
    the model input), `model_s` (the backbone's forward pass and the Grad-CAM gradients:
    one graph) and `heatmap_s` (the maps sampled on each image's pixel grid).
    """
    check_method(method)
    explainer = explainer_for(model)
    classes = np.asarray(classes, dtype=np.int32).reshape(len(images), -1)
    out: list[list[Explanation]] = []
    step = max(1, int(batch_size))
    clock = _Clock(timings)
    for start in range(0, len(images), step):
        chunk = [_rgb(img) for img in images[start : start + step]]
        batch = np.stack([resize(img, explainer.input_size, resize_mode) for img in chunk])
        clock.lap("resize_s")
        cams, proba, used = explainer.explain_batch(
            batch.astype(np.float32), classes[start : start + step], method
        )
        clock.lap("model_s")
        for img, cam_row, p, used_row in zip(chunk, cams, proba, used, strict=True):
            per_image = []
            for cam, class_index in zip(cam_row, used_row, strict=True):
                heatmap = np.clip(
                    to_image_grid(cam, img.shape[:2], explainer.input_size, resize_mode), 0, 1
                )
                per_image.append(
                    Explanation(p, int(class_index), heatmap, peak_of(heatmap), method)
                )
            out.append(per_image)
        clock.lap("heatmap_s")
    return out


class _Clock:
    """Adds the seconds since the last lap to `timings[name]` (nothing when it is None)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from grey (H, W) or (H, W, 1) too."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"images must be RGB (H, W, 3) or grey arrays, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image.astype(np.uint8, copy=False)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """RGB uint8 (H, W, 3) of `image` with `heatmap` blended in through `colormap`.

    The colour's weight grows with the heat (`alpha * heat` per pixel), so where the model
    finds no evidence the image is shown as it is.
    """
    rgb = _rgb(image).astype(np.float32)
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} does not match the image {rgb.shape[:2]}")
    colour = colormaps[colormap](heat)[..., :3].astype(np.float32) * 255.0
    weight = (float(alpha) * heat)[..., None]
    return np.clip(rgb * (1.0 - weight) + colour * weight + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- CLI


INDEX_FILE = "explanations.csv"
INDEX_COLUMNS = (
    "file", "class", "probability", "peak_col", "peak_row", "empty", "predicted_class",
    "method", "overlay",
)  # fmt: skip


def slug(name: str) -> str:
    """A class name as a file-name part: 'Breast cancer' -> 'breast-cancer'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split()) or "class"


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


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """An RGB uint8 array as a PNG, atomically.

    zlib level 1: encoding a colour overlay at the default level 6 took ~5x longer than
    explaining the image (measured by bench/explain_speed.py) for files ~1.3x smaller.
    """
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)


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
    step = max(1, int(batch_size))
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
                    {"resize": loaded.resize},
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
    parser.add_argument("--params", default=config.PARAMS_FILE, help="params.yaml to read")
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
