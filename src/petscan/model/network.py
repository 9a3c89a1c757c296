"""The classifier: a frozen backbone, global average pooling and a small dense head.

The seed's network is InceptionResNetV2 (no top, 224 x 224 x 3, frozen, batch norm
in inference mode) -> global average pooling -> Dense 1024 ReLU (L2 1e-3 on the
kernel) -> Dropout 0.7 -> Dense 3 softmax: 55,913,699 parameters, 1,576,963 of them
trainable. Everything here is built from params section `model`.

The same pieces make three models that agree with each other by construction:

- `build_feature_extractor`: image -> pooled backbone features (what `featurize` caches);
- `build_head`: features -> class probabilities (what cached training fits), starting
  with a `Standardize` layer fitted on the training features (`model.standardize`);
- `build_full_model`: image -> class probabilities (end-to-end training, export, predict),
  which reuses a trained head's layers.

Pre-processing is the `Preprocess` layer inside the models (no Lambda layer, so a saved
`.keras` file loads with `safe_mode=True`); `preprocess_array` is the NumPy twin.

Why the head standardizes its input: pooled features of a backbone whose weights do
not match the data (a random-init backbone above all) can be tiny (a mean of 0.005,
per-dimension spreads of 3e-4, a third of the dimensions constant). The seed's head
(Glorot init, L2 1e-3, learning rate 5e-5) then never moves its argmax and predicts one
class for every image. `Standardize` maps every dimension to zero mean and unit
variance with statistics from the training features only, so the same recipe learns
whatever the backbone's scale. `model.standardize: false` gives the seed's exact head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from petscan.model.backbones import backbone_spec, build_backbone

if TYPE_CHECKING:
    from petscan.params.learning import ModelParams

PREPROCESSING_MODES = ("radimagenet", "rescale", "keras")
# Keras writes a custom class's `__module__` into every `.keras` file; loading finds the class
# by its registered name ("petscan>Preprocess"), never by the module. The layers below were
# defined in the module `petscan.model` before the package split and keep that name, so the
# same model is still the same bytes (its sha256 in train.json and dvc.lock).
SAVED_MODULE = "petscan.model"
# keras.applications' modes, reached through `keras` (backbone_spec(name).keras_preprocessing).
KERAS_MODES = ("tf", "caffe", "torch")
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)


def resolve_preprocessing(mode: str, backbone: str) -> str:
    """The concrete transform for a `model.preprocessing` value.

    `radimagenet` and `rescale` are returned as they are; `keras` becomes the backbone
    family's own keras.applications mode (`tf`, `caffe` or `torch`).
    """
    if mode == "keras":
        return backbone_spec(backbone).keras_preprocessing
    if mode in PREPROCESSING_MODES or mode in KERAS_MODES:
        return mode
    raise ValueError(f"unknown model.preprocessing {mode!r}; choose one of {PREPROCESSING_MODES}")


def _three_channels(x: Any, channels: int | None, xp: Any) -> Any:
    """Grey (1 channel) becomes RGB; a fourth (alpha) channel is dropped."""
    if channels == 1:
        return xp.concatenate([x, x, x], axis=-1)
    if channels == 4:
        return x[..., :3]
    if channels not in (3, None):
        raise ValueError(f"images must have 1, 3 or 4 channels, got {channels}")
    return x


def _transform(x: Any, concrete: str, xp: Any) -> Any:
    """Apply a resolved mode with array namespace `xp` (numpy or keras.ops)."""
    if concrete == "rescale":
        return x / 255.0
    if concrete == "tf":
        return x / 127.5 - 1.0
    if concrete in ("radimagenet", "caffe"):
        bgr = xp.flip(x, axis=-1) - np.asarray(IMAGENET_BGR_MEAN, dtype="float32")
        return bgr / 255.0 if concrete == "radimagenet" else bgr
    if concrete == "torch":
        mean = np.asarray(TORCH_RGB_MEAN, dtype="float32")
        std = np.asarray(TORCH_RGB_STD, dtype="float32")
        return (x / 255.0 - mean) / std
    raise ValueError(f"unknown preprocessing transform {concrete!r}")


def preprocess_array(x: np.ndarray, mode: str, backbone: str) -> np.ndarray:
    """NumPy version of `Preprocess`: RGB pixels in [0, 255] -> the backbone's input.

    `x` is (..., H, W, C) with C in 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped).
    """
    x = np.asarray(x, dtype=np.float32)
    x = _three_channels(x, x.shape[-1], np)
    return _transform(x, resolve_preprocessing(mode, backbone), np).astype(np.float32)


@keras.saving.register_keras_serializable(package="petscan")
class Preprocess(keras.layers.Layer):
    """RGB pixels in [0, 255] -> backbone input, as named by `model.preprocessing`.

    Modes: `radimagenet` (RGB -> BGR, minus the ImageNet mean, then / 255: how the
    RadImageNet weights were trained), `rescale` (x / 255, the seed notebook) and
    `keras` (keras.applications' own mode for `backbone`). Grey inputs become three
    channels and an alpha channel is dropped.
    """

    __module__ = SAVED_MODULE

    def __init__(
        self, mode: str = "radimagenet", backbone: str = "inception_resnet_v2", **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.mode = mode
        self.backbone = backbone
        self.concrete = resolve_preprocessing(mode, backbone)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        x = _three_channels(x, x.shape[-1], ops)
        return _transform(x, self.concrete, ops)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode, "backbone": self.backbone}


def feature_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension (mean, std, constant) of features `(..., D)`, in float64.

    A dimension is constant when its spread is zero or below 1e-6 of its mean: such a
    dimension carries no information, and dividing by its spread would only blow up
    rounding noise (scikit-learn's `StandardScaler` leaves constant features unscaled
    for the same reason).
    """
    x = np.asarray(features).reshape(-1, np.shape(features)[-1])
    if len(x) == 0:
        raise ValueError("cannot compute feature statistics of an empty feature set")
    mean = np.zeros(x.shape[1])
    square = np.zeros(x.shape[1])
    for start in range(0, len(x), 4096):  # chunks: memory-mapped caches stay on disk
        chunk = np.asarray(x[start : start + 4096], dtype=np.float64)
        mean += chunk.sum(axis=0)
        square += np.square(chunk).sum(axis=0)
    mean /= len(x)
    std = np.sqrt(np.maximum(square / len(x) - np.square(mean), 0.0))
    constant = std <= np.maximum(1e-6 * np.abs(mean), np.finfo(np.float32).tiny)
    return mean, std, constant


@keras.saving.register_keras_serializable(package="petscan")
class Standardize(keras.layers.Layer):
    """`(x - mean) / scale` per feature, with statistics fitted once by `adapt`.

    `mean` and `scale` are non-trainable weights, so they are saved in the `.keras` file
    and the full image model applies exactly what the head was trained with. Constant
    dimensions (see `feature_moments`) keep `scale = 1`.
    """

    __module__ = SAVED_MODULE

    def build(self, input_shape: tuple) -> None:
        dim = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(
            shape=(dim,), initializer="ones", trainable=False, name="scale"
        )

    def adapt(self, features: np.ndarray) -> Standardize:
        """Fit `mean` and `scale` on `features` (N, D) or (N, V, D): training data only."""
        mean, std, constant = feature_moments(features)
        if not self.built:
            self.build((None, len(mean)))
        if len(mean) != self.mean.shape[0]:
            raise ValueError(f"Standardize expects {self.mean.shape[0]} features, got {len(mean)}")
        self.mean.assign(mean.astype("float32"))
        self.scale.assign(np.where(constant, 1.0, std).astype("float32"))
        return self

    def call(self, inputs: Any) -> Any:
        return (ops.cast(inputs, self.compute_dtype) - self.mean) / self.scale

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def native_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively: a CPU with AVX512-BF16 or AMX-BF16
    (Linux /proc/cpuinfo flags), or a GPU of compute capability 8.0 or newer."""
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str) -> str:
    """`featurize.precision` -> `float32` or `bfloat16` (`auto`: bfloat16 where native)."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Layers built inside compute in `precision` (bfloat16: Keras' `mixed_bfloat16`,
    float32 variables); the global policy is restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def input_shape(model: ModelParams) -> tuple[int, int, int]:
    """(height, width, 3): the image input of the resolved `model` section."""
    height, width = model.input_size
    return height, width, 3


def _frozen_backbone(
    model: ModelParams, weights_path: str | Path | None, trainable_layers: int = 0
) -> keras.Model:
    """The no-top backbone with all (or all but the top `trainable_layers`) layers frozen.

    Batch-norm layers stay frozen in every case; the callers also run the backbone with
    `training=False`, so their statistics never move.
    """
    if weights_path is not None and weights_path != "imagenet" and not Path(weights_path).is_file():
        raise FileNotFoundError(
            f"backbone weights {weights_path} not found: run `dvc repro fetch_weights` first"
        )
    backbone = build_backbone(model.backbone, input_shape(model), weights_path)
    backbone.trainable = trainable_layers > 0
    if trainable_layers > 0:
        cut = len(backbone.layers) - trainable_layers
        for i, layer in enumerate(backbone.layers):
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= cut and not is_bn
    return backbone


def _pooled_features(
    model: ModelParams,
    weights_path: str | Path | None,
    trainable_layers: int = 0,
    precision: str = "float32",
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Symbolic image input and its pooled backbone features (always float32).

    Only the backbone computes in `precision`; pre-processing and pooling stay float32.
    """
    inputs = keras.Input(shape=input_shape(model), dtype="float32", name="image")
    x = Preprocess(model.preprocessing, model.backbone, name="preprocess")(inputs)
    with _dtype_policy(resolve_precision(precision)):
        backbone = _frozen_backbone(model, weights_path, trainable_layers)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype="float32")(x)
    return inputs, x


def build_feature_extractor(
    model: ModelParams, weights_path: str | Path | None, precision: str = "float32"
) -> keras.Model:
    """Frozen image -> features model: float32 (H, W, 3) in [0, 255] RGB -> (None, D).

    `precision` (`featurize.precision`) is the backbone's compute type; the features
    are float32 either way.
    """
    inputs, features = _pooled_features(model, weights_path, precision=precision)
    return keras.Model(inputs, features, name="feature_extractor")


def build_head(
    feature_dim: int,
    num_classes: int,
    model: ModelParams,
    seed: int | None = None,
    train_features: np.ndarray | None = None,
) -> keras.Model:
    """Features (D,) -> [Standardize] -> Dense(head_units, ReLU, L2) -> Dropout -> softmax.

    With `model.standardize` (the default) the head starts with a `Standardize` layer
    fitted on `train_features` (N, D) or (N, V, D): the training features only, never
    val or test (without them it is the identity until `adapt` is called). `seed` fixes
    the initial weights and the dropout mask sequence.
    """

    def init(offset: int) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)

    inputs = keras.Input(shape=(int(feature_dim),), dtype="float32", name="features")
    x = inputs
    if model.standardize:
        standardize = Standardize(name="standardize")
        if train_features is not None:
            standardize.adapt(train_features)
        x = standardize(x)
    x = keras.layers.Dense(
        model.head_units,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(model.l2),
        kernel_initializer=init(0),
        name="head_dense",
    )(x)
    x = keras.layers.Dropout(model.dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        int(num_classes), activation="softmax", kernel_initializer=init(1), name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="head")


def build_full_model(
    model: ModelParams,
    num_classes: int,
    weights_path: str | Path | None,
    head: keras.Model | None = None,
    trainable_backbone_layers: int = 0,
    precision: str = "float32",
) -> keras.Model:
    """Image -> probabilities: Preprocess -> backbone -> pooling -> head.

    With `head`, its layers (and so its trained weights) are reused, so the full model
    gives the same probabilities as `head` applied to `build_feature_extractor` output.
    `trainable_backbone_layers` unfreezes that many top backbone layers (batch norm
    excepted) for end-to-end fine-tuning. `precision` is the backbone's compute type: the
    one the head's training features were computed in, so that the image model predicts
    what the head saw.
    """
    inputs, features = _pooled_features(model, weights_path, trainable_backbone_layers, precision)
    if head is None:
        head = build_head(features.shape[-1], num_classes, model)
    if head.input_shape[-1] != features.shape[-1] or head.output_shape[-1] != num_classes:
        raise ValueError(
            f"head maps {head.input_shape[-1]} features to {head.output_shape[-1]} classes; "
            f"the backbone gives {features.shape[-1]} features and there are {num_classes} "
            "classes: retrain the head for this backbone (model.backbone in params.yaml)"
        )
    x = features
    for layer in head.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            x = layer(x)
    return keras.Model(inputs, x, name=f"{model.backbone}_classifier")
