"""`pet_demo`: a compact CNN for whole-body MIPs on CPUs, the demo's pretrained backbone.

RadImageNet cannot be downloaded here, and a random-init InceptionResNetV2 leaves the head
at chance. This backbone plays RadImageNet's role for the demo: pretrained offline on a
synthetic PET corpus the demo never sees (`petscan.demo.pretrain`, `make pretrain-demo`), then
frozen in the unchanged pipeline. Its weights ship with the repository (params
`weights.demo`: the file and its pinned sha256; the pretraining record beside it).

Design, for images about 535 x 320 px with lesions 5-10 px across (2-5 px at 256 px):
- input 256 x 160 (height x width: the MIPs are tall), x / 255 (`rescale`), stretched;
- a 4 x 4 stride-4 stem (32 channels) and a 3 x 3 convolution at 64 x 40: a lesion of
  2-5 px still falls inside one or two stem patches, and a stride-2 stem at full size cost
  twice the training time on 2 cores (measured: 15 against 30 images/s);
- one stride-2 stage (64 channels) down to a 32 x 20 grid (stride 8, so Grad-CAM can
  point at a lesion within about 15 mm);
- two dilated 3 x 3 convolutions (dilation 2 and 4) at stride 8 widen the receptive
  field to the body region around a lesion (chest or pelvis) without losing resolution;
- a 1 x 1 projection to `FEATURE_DIM` channels: the feature map the pipeline pools.
About 0.15 M parameters; it weighs well under 1 MB.
"""

from __future__ import annotations

import keras
from keras import layers

NAME = "pet_demo"
# the backbone's own input (height x width) and pre-processing (x / 255); the params schema
# repeats them in `BACKBONE_DEFAULTS` (what `model.input_size: null` means), and a test
# keeps the two in step (params sit below the model and do not import it)
INPUT_SIZE = (256, 160)
PREPROCESSING = "rescale"
FEATURE_DIM = 128
STEM = 32  # channels of the 4 x 4 stride-4 stem and the convolution after it
STAGE = 64  # channels of the stride-2 stage
CONTEXT = ((64, 2), (64, 4))  # (channels, dilation) at stride 8
BN_MOMENTUM = 0.9  # pretraining only; frozen, the moving statistics must have converged


def _conv(x, filters: int, name: str, strides: int = 1, dilation: int = 1, kernel: int = 3):
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_pet_demo(
    include_top: bool = False, weights: str | None = None, input_shape=None, **_
) -> keras.Model:
    """The no-top backbone (the keras.applications contract); `weights`: a `.h5` file."""
    inputs = keras.Input(shape=input_shape or (*INPUT_SIZE, 3), name="input_layer")
    x = _conv(inputs, STEM, "stem", strides=4, kernel=4)
    x = _conv(x, STEM, "stem_b")
    x = _conv(x, STAGE, "stage_a", strides=2)
    x = _conv(x, STAGE, "stage_b")
    for k, (filters, dilation) in enumerate(CONTEXT):
        x = _conv(x, filters, f"context{k}", dilation=dilation)
    x = _conv(x, FEATURE_DIM, "features", kernel=1)
    model = keras.Model(inputs, x, name="pet_demo_backbone")
    if weights is not None:
        model.load_weights(weights)
    return model
