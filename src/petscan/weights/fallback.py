"""Backbone weights that do not come from `weights.sources`: the shipped demo file, a
seeded random init, Keras' ImageNet weights.

`pet_demo` is always installed from `weights.demo` (a committed file with a pinned
sha256). When no source works, `weights.fallback` picks `random` (labelled loudly:
`random_init` true) or `imagenet` (needs internet access). Both are written as legacy
`.h5`, the RadImageNet file's own format, so every later stage loads them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras

from petscan.model import backbones
from petscan.utils import logs
from petscan.utils.io import sha256_file
from petscan.weights.errors import WeightsError, error_text
from petscan.weights.sources import resolve_file
from petscan.weights.transfer import copy_file

if TYPE_CHECKING:
    from petscan.params.inputs import DemoWeights


def copy_demo_backbone(demo: DemoWeights, dest: Path, root: Path) -> str:
    """Copy the shipped `pet_demo` file (`weights.demo.path`, relative to `root`) to `dest`
    after checking it against `weights.demo.sha256`; return its sha256."""
    path = resolve_file(demo.path, root)
    restore = f"restore it (`git checkout -- {demo.path}`) or rebuild it (`make pretrain-demo`)"
    if not path.is_file():
        raise WeightsError(f"the demo backbone {path} is missing: {restore}")
    digest = sha256_file(path)
    if demo.sha256 and digest != demo.sha256:
        raise WeightsError(
            f"the demo backbone {path} has sha256 {digest}, but weights.demo.sha256 pins "
            f"{demo.sha256}: {restore}, then pin the new file's sha256"
        )
    copy_file(path, dest, progress=False)
    return digest


def save_random_backbone(
    backbone: str, input_shape: tuple[int, int, int], seed: int, path: str | Path
) -> None:
    """A seeded random-init backbone written as a legacy `.h5` (same format as RadImageNet's).

    Seeds Python, NumPy and Keras globally (`keras.utils.set_random_seed`): the same seed
    gives byte-identical tensors in any process.
    """
    keras.utils.set_random_seed(seed)
    model = backbones.build_backbone(backbone, input_shape)
    with logs.legacy_h5():  # the RadImageNet file's own format, on purpose
        model.save(str(path))


def save_imagenet_backbone(
    backbone: str, input_shape: tuple[int, int, int], path: str | Path
) -> None:
    """Keras' ImageNet weights for the backbone, written as a legacy `.h5`."""
    if backbone == "tiny":
        raise WeightsError("the 'tiny' test backbone has no ImageNet weights")
    try:
        model = backbones.build_backbone(backbone, input_shape, weights="imagenet")
    except Exception as exc:
        raise WeightsError(
            "fallback 'imagenet' needs Keras to download ImageNet weights from "
            f"storage.googleapis.com, which failed ({error_text(exc)}); on an offline "
            "machine it cannot work: place the RadImageNet file or use fallback: random"
        ) from None
    with logs.legacy_h5():
        model.save(str(path))
