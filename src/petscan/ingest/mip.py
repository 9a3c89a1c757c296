"""Rotating maximum-intensity projections of an SUV volume, written as 16-bit grey PNG.

The volume is canonical RAS+ (`nifti.canonical`): `volume[i, j, k]`, i to the patient's
Right, j Anterior, k Superior. `isotropic` resamples it to cubic voxels of `voxel_mm`
(linear interpolation, voxel centres aligned at index 0). `mip(volume, angle)` rotates the
viewer about the body axis and takes the maximum along the line of sight:

- angle 0: anterior view, the patient's right on the image's left (as radiology shows it);
  90: the viewer stands at the patient's right; 180: posterior; angles grow from the front
  to the patient's right;
- linear interpolation; the image size is the same at every angle (its width is the
  diagonal of the axial plane, so no rotation crops the body); the rotation is about the
  axial voxel `pivot(shape)`, which lands on the middle column;
- the head at the top (row 0 is the most superior slice).

`display(mip, window, invert)` maps an SUV window (e.g. [0, 10]) onto 0..65535, inverted
(white background, dark uptake: the demo's convention) or plain, and `write_png` writes it
atomically with no text chunk (no header value goes into the file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from petscan.utils.io import atomic_path


def isotropic(
    volume: np.ndarray, spacing: tuple[float, float, float], voxel_mm: float
) -> np.ndarray:
    """`volume` resampled to cubic voxels of `voxel_mm` (linear); first voxel centres kept."""
    from scipy import ndimage

    step = np.asarray(spacing, dtype=np.float64) / voxel_mm
    shape = tuple(
        int(math.floor((n - 1) * s + 1e-6)) + 1 for n, s in zip(volume.shape, step, strict=True)
    )
    if np.allclose(step, 1.0):
        return volume.astype(np.float32, copy=False)
    return ndimage.affine_transform(
        volume.astype(np.float32, copy=False),
        1.0 / step,
        output_shape=shape,
        order=1,
        mode="nearest",
        prefilter=False,
    )


def view_axes(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(image column direction, line of sight) in the axial (i, j) plane at `angle_deg`."""
    theta = math.radians(angle_deg)
    across = np.array([-math.cos(theta), math.sin(theta)])  # 0: to the patient's left
    sight = np.array([-math.sin(theta), -math.cos(theta)])  # 0: anterior to posterior
    return across, sight


def width(shape: tuple[int, ...]) -> int:
    """The image width (pixels) for a volume of `shape`, the same at every angle: odd, and
    at least the axial diagonal, so that no rotation crops the body."""
    return 2 * int(math.ceil(math.hypot(shape[0], shape[1]) / 2)) + 1


def pivot(shape: tuple[int, ...]) -> tuple[int, int]:
    """The axial voxel the views rotate about; it lands on the middle column, `width // 2`.
    A voxel centre (not the volume's centre): at 0, 90, 180 and 270 degrees every pixel is
    an exact voxel, without interpolation blur."""
    return (shape[0] - 1) // 2, (shape[1] - 1) // 2


def mip(volume: np.ndarray, angle_deg: float, chunk: int = 32) -> np.ndarray:
    """(slices, width) maximum-intensity projection at `angle_deg`, the head at row 0.

    Bilinear in the axial plane (the rotation is about the body axis, so slices never mix),
    computed for `chunk` slices at a time: the four neighbours of every sample point are
    gathered once per angle as rows of the (voxels, slices) matrix; outside the volume is 0.
    """
    nx, ny, nz = volume.shape
    w = width(volume.shape)
    index, weight = _bilinear_taps(volume.shape, angle_deg)
    padded = np.zeros((nx + 2, ny + 2, nz), np.float32)  # a zero border: outside is 0
    padded[1:-1, 1:-1] = volume
    rows = padded.reshape(-1, nz)
    image = np.empty((nz, w), np.float32)
    for first in range(0, nz, chunk):
        part = rows[:, first : first + chunk]
        sampled = sum(weight[t][:, None] * part[index[t]] for t in range(4))
        image[first : first + part.shape[1]] = sampled.reshape(w, w, -1).max(axis=1).T
    return image[::-1]  # superior first


def _bilinear_taps(shape: tuple[int, ...], angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """For each (column, depth) sample of the rotated plane: the flat indices of its four
    neighbours in the zero-bordered plane, and their bilinear weights (4, width * width)."""
    nx, ny = shape[0], shape[1]
    w = width(shape)
    across, sight = view_axes(angle_deg)
    steps = np.arange(w, dtype=np.float64) - w // 2
    col, depth = np.meshgrid(steps, steps, indexing="ij")
    pi, pj = pivot(shape)
    x = pi + across[0] * col + sight[0] * depth + 1.0  # +1: the zero border
    y = pj + across[1] * col + sight[1] * depth + 1.0
    inside = (x >= 0) & (x <= nx + 1) & (y >= 0) & (y <= ny + 1)
    x, y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)
    x0 = np.minimum(np.floor(x), nx).astype(np.int64)
    y0 = np.minimum(np.floor(y), ny).astype(np.int64)
    fx, fy = x - x0, y - y0
    stride = ny + 2
    index = np.stack(
        [x0 * stride + y0, x0 * stride + y0 + 1, (x0 + 1) * stride + y0, (x0 + 1) * stride + y0 + 1]
    ).reshape(4, -1)
    weight = np.stack([(1 - fx) * (1 - fy), (1 - fx) * fy, fx * (1 - fy), fx * fy])
    weight = (weight * inside).astype(np.float32).reshape(4, -1)
    return index, weight


def display(projection: np.ndarray, window: tuple[float, float], invert: bool) -> np.ndarray:
    """uint16 grey: SUV `window` onto 0..65535, inverted (uptake dark) or plain."""
    low, high = window
    scaled = np.clip((projection.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    grey = np.round(scaled * 65535.0).astype(np.uint16)
    return 65535 - grey if invert else grey  # inverted: the exact complement


def write_png(path: str | Path, image: np.ndarray) -> None:
    """A 16-bit grey PNG, atomically, without any text chunk or other metadata."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint16))
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
