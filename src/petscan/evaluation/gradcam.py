"""Grad-CAM and Grad-CAM++ heatmaps: where in an image the classifier's evidence lies.

    explanations = explain_images(model, [rgb, ...], params.model.resize)
    overlay(rgb, explanations[0].heatmap)  # `evaluation.overlay`: RGB uint8 like `rgb`

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

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from petscan.data.images import content_box, resize
from petscan.evaluation.overlay import as_rgb

METHODS = ("gradcam", "gradcam++")
TARGETS = ("predicted", "all")
PREDICTED = -1  # class code meaning "the most probable class of this image"


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
    resize_mode: str = "stretch",
    method: str = "gradcam",
    target: str | int = "predicted",
    batch_size: int = 8,
    timings: dict[str, float] | None = None,
) -> list[Explanation]:
    """Heatmaps of `images` (decoded RGB uint8 (H, W, 3), any size) in their own pixel grids.

    `model` is the full image -> probabilities model (as saved in `models/model.keras`);
    `resize_mode` how the images become model inputs (`model.resize`; the input size is
    the model's own). `target` is `"predicted"` (each image's most probable class), a class
    index, or `"all"`: then every class is explained and the list holds
    `num_classes` explanations per image, image-major (image 0's classes 0..K-1, image 1's...).
    """
    check_method(method)
    explainer = explainer_for(model)
    codes = _class_codes(target, explainer.num_classes)
    classes = np.tile(codes, (len(images), 1))
    nested = explain_classes(model, images, classes, resize_mode, method, batch_size, timings)
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
    step = max(1, batch_size)
    clock = _Clock(timings)
    for start in range(0, len(images), step):
        chunk = [as_rgb(img) for img in images[start : start + step]]
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
