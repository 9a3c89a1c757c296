"""The frozen image backbones the pipeline knows, by name.

RadImageNet publishes no-top weights for InceptionResNetV2, ResNet50, DenseNet121
and InceptionV3, all as legacy Keras `.h5` files loaded by layer order. `pet_demo` is
the compact backbone pretrained on synthetic PET that the demo uses when RadImageNet is not
there (`model/pet_demo.py`). `tiny` is a three-layer convolutional stand-in that makes the
tests fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from petscan.model import pet_demo


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable[..., keras.Model]
    feature_dim: int
    keras_preprocessing: str  # the mode keras.applications uses for this family


def _tiny(
    include_top: bool = False, weights: str | None = None, input_shape=None, **_
) -> keras.Model:
    """A small, deterministic CNN with the same no-top contract as keras.applications."""
    inputs = keras.Input(shape=input_shape or (32, 32, 3), name="input_layer")
    x = inputs
    for i, filters in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"tiny_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"tiny_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"tiny_relu{i}")(x)
    model = keras.Model(inputs, x, name="tiny_backbone")
    if weights is not None:
        model.load_weights(weights)
    return model


BACKBONES: dict[str, BackboneSpec] = {
    "inception_resnet_v2": BackboneSpec(
        "inception_resnet_v2", keras.applications.InceptionResNetV2, 1536, "tf"
    ),
    "resnet50": BackboneSpec("resnet50", keras.applications.ResNet50, 2048, "caffe"),
    "densenet121": BackboneSpec("densenet121", keras.applications.DenseNet121, 1024, "torch"),
    "inception_v3": BackboneSpec("inception_v3", keras.applications.InceptionV3, 2048, "tf"),
    "pet_demo": BackboneSpec("pet_demo", pet_demo.build_pet_demo, pet_demo.FEATURE_DIM, "tf"),
    "tiny": BackboneSpec("tiny", _tiny, 32, "tf"),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_backbone(
    name: str, input_shape: tuple[int, int, int], weights: str | Path | None = None
) -> keras.Model:
    """A no-top backbone; `weights` is a legacy `.h5` file loaded by layer order,
    `"imagenet"` for Keras' own ImageNet weights, or None for random init."""
    spec = backbone_spec(name)
    if isinstance(weights, Path):
        weights = str(weights)
    return spec.builder(include_top=False, weights=weights, input_shape=tuple(input_shape))
