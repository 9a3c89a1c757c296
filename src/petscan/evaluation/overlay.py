"""Heatmaps as pictures: an image with its heatmap blended in, and the PNG files they go to.

`petscan explain` writes one overlay per image and class, the explain stage one per gallery
panel, the web app one per upload; all three draw them with `overlay`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from petscan.utils.io import atomic_path

DEFAULT_COLORMAP = "jet"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from RGB (H, W, 3) or grey (H, W) or (H, W, 1)."""
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
    rgb = as_rgb(image).astype(np.float32)
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} does not match the image {rgb.shape[:2]}")
    colour = colormaps[colormap](heat)[..., :3].astype(np.float32) * 255.0
    weight = (float(alpha) * heat)[..., None]
    return np.clip(rgb * (1.0 - weight) + colour * weight + 0.5, 0, 255).astype(np.uint8)


def slug(name: str) -> str:
    """A class name as a file-name part: 'Breast cancer' -> 'breast-cancer'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split()) or "class"


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """An RGB uint8 array as a PNG, atomically.

    zlib level 1: encoding a colour overlay at the default level 6 took ~5x longer than
    explaining the image (measured by bench/explain_speed.py) for files ~1.3x smaller.
    """
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
