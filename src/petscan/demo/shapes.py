"""The 3-D shapes a synthetic patient is drawn from, in anatomical units (see `demo.generate`).

Every structure (body outline, organ, benign uptake, lesion) is a `Blob`: an ellipsoid, a
ring, a tapered rod (capsule) or a Gaussian, with an uptake value in SUV-like units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Blob:
    """One 3-D structure with uniform (`ellipse`, `ring`, `capsule`) or peaked (`gauss`) uptake.

    `ellipse`/`gauss`/`ring`: centre (x, y, z) and semi-axes (rx, ry, rz); for `gauss` the
    axes are standard deviations. `capsule`: a tapered rod from (x, y, z) radius `rx` to
    (x1, y1, z1) radius `r1`. `value` is the uptake in SUV-like units.
    """

    shape: str
    x: float
    y: float
    z: float
    rx: float
    ry: float
    rz: float
    value: float
    x1: float = 0.0
    y1: float = 0.0
    z1: float = 0.0
    r1: float = 0.0


def ellipse(x, y, z, rx, ry, value, rz=None) -> Blob:
    return Blob("ellipse", x, y, z, rx, ry, rx if rz is None else rz, value)


def gauss(x, y, z, sigma, value, sy=None) -> Blob:
    return Blob("gauss", x, y, z, sigma, sigma if sy is None else sy, sigma, value)


def capsule(p0, p1, r0, r1, value) -> Blob:
    return Blob("capsule", p0[0], p0[1], p0[2], r0, r0, r0, value, p1[0], p1[1], p1[2], r1)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform draw: as many small values between 1 and 2 as between 5 and 10."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))
