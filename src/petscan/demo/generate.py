"""Synthetic whole-body PET images: the demo data set that stands in for a hospital export.

Each synthetic patient is a set of 3-D structures (body outline, organs, benign uptake,
lesions) in anatomical units: `y` runs from the vertex (0) to mid-thigh (1), `x` to the
image right (the patient's left, as a coronal view from the front shows it), `z` to the
front. A view projects them at a small angle around the body axis and takes the maximum
along each ray, as a maximum-intensity projection (MIP) does, in SUV-like units. The
projection is blurred to the scanner's resolution, gets Poisson noise, and is shown as a
viewer shows it: inverted grey (white background, dark uptake) in an SUV window.

Classes (folder names are matched by the words "breast", "prostate" and otherwise "no
cancer"/"normal"): breast cancer patients are women with a focal lesion in one breast,
often with ipsilateral axillary nodes and sometimes bone, liver or lung metastases;
prostate cancer patients are men with focal uptake just below (and partly behind) the
bladder, sometimes with pelvic nodes and bone metastases; patients without cancer are of
either sex and show physiological uptake and benign confounders only. Benign findings
(brown fat, muscle, joints, bowel, an injection site) are drawn with the same
probabilities in every class, so only the lesions tell the classes apart.

Everything is seeded from `(seed, patient index)`: the same parameters give
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from petscan.params import loading as config
from petscan.params.schema import DEMO_PATIENT_PREFIX
from petscan.utils.errors import UserError, reports_user_errors

MM_PER_UNIT = 1100.0  # vertex to mid-thigh of an average adult, in millimetres
NORMAL, BREAST, PROSTATE = "normal", "breast", "prostate"
# (format name, probability): most files are 8-bit grey or RGB PNG, a minority odd ones.
FORMATS: tuple[tuple[str, float], ...] = (
    ("png-grey", 0.50),
    ("png-rgb", 0.22),
    ("png-rgba", 0.09),
    ("png-grey16", 0.08),
    ("jpeg-grey", 0.06),
    ("jpeg-rgb", 0.05),
)
TRUTH_FILE = ".ground_truth.csv"  # hidden: `images.list_images` skips it
LESIONS_FILE = ".lesions.csv"  # every lesion of every file, one row each
DEFAULT_VISIBLE_CONTRAST = 0.1  # params synthetic.visible_contrast
LESION_COLUMNS = (
    "path", "patient", "view", "lesion", "kind", "col", "row", "diam_mm", "radius_col",
    "radius_row", "px_per_mm_col", "px_per_mm_row", "suv", "contrast", "in_view", "visible",
)  # fmt: skip


# --------------------------------------------------------------------------- structures


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


def _ell(x, y, z, rx, ry, value, rz=None) -> Blob:
    return Blob("ellipse", x, y, z, rx, ry, rx if rz is None else rz, value)


def _gauss(x, y, z, sigma, value, sy=None) -> Blob:
    return Blob("gauss", x, y, z, sigma, sigma if sy is None else sy, sigma, value)


def _cap(p0, p1, r0, r1, value) -> Blob:
    return Blob("capsule", p0[0], p0[1], p0[2], r0, r0, r0, value, p1[0], p1[1], p1[2], r1)


@dataclass
class Anatomy:
    """One synthetic patient: outline, low-uptake lung regions, uptake, and ground truth."""

    outline: list[Blob]
    lungs: list[Blob]
    uptake: list[Blob]
    background: float
    lung_factor: float
    half_width: float  # widest extent of the outline from the midline, in units
    truth: dict[str, Any]
    primary: tuple[float, float, float] | None = None  # (x, y, z) of the main lesion
    scanner: dict[str, float] = field(default_factory=dict)
    lesions: list[Lesion] = field(default_factory=list)  # every lesion drawn, primary first


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion (a `gauss` blob of `uptake`) and what it is."""

    kind: str  # primary | axillary_node | chest_node | pelvic_node | para_aortic_node | *_met
    blob: Blob
    diam_mm: float  # full width at half maximum


@dataclass(frozen=True)
class PatientPlan:
    index: int  # seeds the patient together with the data set seed
    patient: str
    folder: str
    kind: str
    views: int


# --------------------------------------------------------------------------- planning


def class_kind(folder: str) -> str:
    """Which synthetic class a folder holds, from its name."""
    name = folder.lower()
    if "breast" in name:
        return BREAST
    if "prostate" in name:
        return PROSTATE
    if name.startswith("no") or "normal" in name or "healthy" in name:
        return NORMAL
    raise ValueError(
        f"synthetic.counts: cannot tell which class folder {folder!r} holds; name it after "
        "'No cancer', 'breast cancer' or 'prostate cancer' in params.yaml"
    )


def plan_patients(
    counts: dict[str, int],
    seed: int,
    images_per_patient: Sequence[int] = (1, 3),
    prefix: str = DEMO_PATIENT_PREFIX,
) -> list[PatientPlan]:
    """Patients with 1..3 views each so that every folder gets exactly its count of images.

    Patient ids (`<prefix>-00042`) are a seeded permutation over the whole data set, so an
    id says nothing about the class. Another prefix keeps another corpus's ids apart from
    the demo's (the pretraining corpus uses `syn`).
    """
    low, high = int(images_per_patient[0]), int(images_per_patient[-1])
    if not 1 <= low <= high:
        raise ValueError(
            f"images_per_patient must be [min, max] with 1 <= min <= max, got {low}..{high}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E3779B9]))
    draft: list[tuple[str, int]] = []
    for folder, count in counts.items():
        if int(count) < 0:
            raise ValueError(f"synthetic.counts[{folder!r}] must be >= 0, got {count}")
        class_kind(folder)
        left = int(count)
        while left > 0:
            views = min(int(rng.integers(low, high + 1)), left)
            draft.append((folder, views))
            left -= views
    numbers = rng.permutation(len(draft)) + 1
    width = max(5, len(str(len(draft))))
    return [
        PatientPlan(i, f"{prefix}-{numbers[i]:0{width}d}", folder, class_kind(folder), views)
        for i, (folder, views) in enumerate(draft)
    ]


# --------------------------------------------------------------------------- anatomy


def _lu(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform draw: as many small values between 1 and 2 as between 5 and 10."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _outline(rng: np.random.Generator, sex: str) -> tuple[list[Blob], dict[str, float]]:
    """Body outline: head, neck, a tapered torso, thighs and arms (down or raised)."""
    female = sex == "F"
    w = float(np.clip(rng.normal(1.0, 0.08), 0.82, 1.25))  # frame
    fat = float(np.clip(rng.gamma(2.0, 0.06), 0.0, 0.45))  # abdominal habitus
    hips = 1.0 + (0.09 if female else 0.0) + 0.4 * fat
    torso = [  # (y, half width) from the neck base to the crotch
        (0.255, 0.05),
        (0.29, (0.16 if female else 0.178) * w),
        (0.36, (0.152 if female else 0.168) * w * (1 + 0.3 * fat)),
        (0.46, (0.145 if female else 0.158) * w * (1 + 0.6 * fat)),
        (0.57, (0.135 if female else 0.148) * w * (1 + 0.9 * fat)),
        (0.67, 0.152 * w * hips * (1 + 0.5 * fat)),
        (0.77, 0.160 * w * hips),
        (0.85, 0.150 * w * hips),
    ]
    blobs = [_ell(0.0, 0.1, 0.0, 0.068 * (0.95 + 0.1 * w), 0.098, 1.0)]
    blobs.append(_cap((0, 0.17, 0), (0, 0.27, 0), 0.05 * w, 0.055 * w, 1.0))
    for (y0, h0), (y1, h1) in zip(torso[:-1], torso[1:], strict=True):
        r0, r1 = 0.06 * w, 0.06 * w
        blobs.append(_cap((0, y0, 0), (0, y1, 0), r0, r1, 1.0))
        blobs.append(_cap((-(h0 - r0), y0, 0), (-(h1 - r1), y1, 0), r0, r1, 1.0))
        blobs.append(_cap((h0 - r0, y0, 0), (h1 - r1, y1, 0), r0, r1, 1.0))
    thigh = 0.072 * w * hips
    for s in (-1, 1):
        blobs.append(
            _cap(
                (s * 0.07 * w * hips, 0.8, 0),
                (s * 0.075 * w * hips, 1.15, 0),
                thigh,
                thigh * 0.85,
                1.0,
            )
        )
    arms = str(rng.choice(["down", "raised", "one-up"], p=[0.5, 0.42, 0.08]))
    gap = rng.uniform(0.0, 0.03)
    widest = max(h for _, h in torso)
    shoulder = torso[1][1] - 0.03
    side_up = int(rng.choice([-1, 1]))
    for s in (-1, 1):
        up = arms == "raised" or (arms == "one-up" and s == side_up)
        if up:
            elbow = (s * (shoulder + rng.uniform(-0.02, 0.03)), rng.uniform(0.02, 0.1), 0.0)
            hand = (s * rng.uniform(0.03, 0.12), rng.uniform(-0.12, -0.04), 0.0)
        else:
            elbow = (s * (torso[4][1] + 0.035 + gap), rng.uniform(0.53, 0.57), 0.0)
            hand = (s * (torso[6][1] + 0.03 + gap), rng.uniform(0.76, 0.8), 0.0)
        blobs.append(_cap((s * shoulder, 0.3, 0), elbow, 0.042 * w, 0.034 * w, 1.0))
        blobs.append(_cap(elbow, hand, 0.034 * w, 0.026 * w, 1.0))
        if not up:
            blobs.append(_ell(hand[0], hand[1] + 0.05, 0.0, 0.028 * w, 0.05, 1.0))
    extent = max(abs(b.x) + b.rx for b in blobs)
    extent = max([extent] + [abs(b.x1) + b.r1 for b in blobs if b.shape == "capsule"])
    marks = {
        "w": w,
        "fat": fat,
        "chest": torso[2][1],
        "shoulder": shoulder,
        "waist": torso[4][1],
        "extent": extent,
        "widest": widest,
        "arms_up_left": float(arms == "raised" or (arms == "one-up" and side_up == -1)),
        "arms_up_right": float(arms == "raised" or (arms == "one-up" and side_up == 1)),
    }
    return blobs, {**marks, "arms": arms}


def _head_neck(rng: np.random.Generator) -> list[Blob]:
    brain = rng.uniform(6.0, 13.0)
    blobs = [
        Blob("ring", 0.0, 0.095, 0.0, 0.058, 0.068, 0.07, brain),
        _ell(0.0, 0.158, -0.03, 0.043, 0.022, brain * rng.uniform(0.65, 0.85)),
        _ell(0.0, 0.152, 0.06, 0.022, 0.012, rng.uniform(1.3, 3.0)),  # tongue / mouth
    ]
    parotid, submandibular, tonsil = _lu(rng, 1.3, 3.8), _lu(rng, 1.3, 3.5), _lu(rng, 1.5, 6.5)
    for s in (-1, 1):
        jitter = rng.uniform(0.85, 1.15)
        blobs.append(_ell(s * 0.052, 0.155, -0.01, 0.013, 0.022, parotid * jitter))
        blobs.append(_ell(s * 0.032, 0.19, 0.03, 0.01, 0.009, submandibular * jitter))
        blobs.append(_gauss(s * 0.014, 0.178, 0.0, 0.006, tonsil * rng.uniform(0.8, 1.2)))
    if rng.random() < 0.12:  # diffuse thyroid uptake
        value = _lu(rng, 1.8, 5.0)
        blobs += [_ell(s * 0.012, 0.237, 0.03, 0.008, 0.014, value) for s in (-1, 1)]
    if rng.random() < 0.15:  # vocal cords
        blobs.append(_gauss(0.0, 0.222, 0.03, 0.004, rng.uniform(2.0, 4.0)))
    return blobs


def _trunk(rng: np.random.Generator, sex: str, marks: dict[str, Any]) -> tuple[list[Blob], dict]:
    """Organs from the mediastinum to the pelvis, with their physiological range."""
    blood = rng.uniform(1.3, 2.2)
    heart_mode = rng.choice(["suppressed", "moderate", "high"], p=[0.35, 0.3, 0.35])
    heart = {
        "suppressed": rng.uniform(1.0, 2.4),
        "moderate": rng.uniform(3.0, 6.0),
        "high": _lu(rng, 6.0, 16.0),
    }[str(heart_mode)]
    hx, hy = 0.035 + rng.uniform(-0.01, 0.01), 0.415 + rng.uniform(-0.015, 0.015)
    blobs = [
        _cap((0.0, 0.3, 0.0), (0.02, 0.36, 0.02), 0.012, 0.014, blood),  # aortic arch / SVC
        _cap((0.02, 0.36, -0.04), (0.0, 0.62, -0.05), 0.011, 0.01, blood * 0.9),  # aorta
        _ell(hx - 0.015, hy - 0.01, 0.0, 0.045, 0.04, blood),  # cardiac blood pool
        Blob("ring", hx, hy, 0.03, 0.047, 0.042, 0.045, max(heart, blood)),
    ]
    liver = rng.uniform(1.8, 3.0)
    dy = rng.uniform(-0.015, 0.02)
    blobs += [
        _ell(-0.07, 0.495 + dy, 0.0, 0.095, 0.058, liver),
        _ell(-0.005, 0.475 + dy, 0.02, 0.07, 0.035, liver),
        _ell(-0.1, 0.53 + dy, 0.0, 0.06, 0.05, liver),
        _ell(0.112, 0.495 + dy, -0.04, 0.027, 0.045, liver * rng.uniform(0.75, 1.05)),  # spleen
    ]
    blobs += [
        _gauss(
            rng.uniform(-0.12, 0.02), 0.49 + dy + rng.uniform(-0.03, 0.03), 0, 0.02, liver * 1.08
        )
        for _ in range(3)
    ]
    if rng.random() < 0.4:  # stomach wall
        blobs.append(_ell(0.075, 0.475 + dy, 0.04, 0.04, 0.03, _lu(rng, 1.3, 4.0)))
    for s, ky in ((1, 0.56), (-1, 0.575)):
        ky += dy
        blobs.append(_ell(s * 0.068, ky, -0.05, 0.026, 0.048, rng.uniform(2.2, 5.0)))
        blobs.append(_gauss(s * 0.058, ky + 0.005, -0.04, 0.011, _lu(rng, 2.0, 25.0)))
        if rng.random() < 0.35:  # ureter, patchy with peristalsis
            pts = [(s * 0.055, ky + 0.03, -0.04), (s * 0.045, 0.7, -0.03), (s * 0.035, 0.775, 0.0)]
            for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
                blobs.append(_cap(p0, p1, 0.003, 0.003, _lu(rng, 1.2, 6.0)))
    bladder_y = 0.79 + rng.uniform(-0.012, 0.018)
    bladder_rx = rng.uniform(0.022, 0.065)
    bladder_ry = bladder_rx * rng.uniform(0.6, 0.95)
    bladder = _lu(rng, 2.5, 100.0)
    blobs.append(_ell(0.0, bladder_y, 0.02, bladder_rx, bladder_ry, bladder))
    spine = rng.uniform(1.1, 2.2)
    blobs += [
        _cap((0, 0.27, -0.06), (0, 0.71, -0.06), 0.011, 0.013, spine),
        _cap((0, 0.32, 0.08), (0, 0.42, 0.08), 0.009, 0.009, spine * 0.8),  # sternum
        _ell(0.0, 0.735, -0.06, 0.025, 0.03, spine * 0.85),  # sacrum
    ]
    for s in (-1, 1):
        blobs.append(_ell(s * 0.085, 0.695, -0.05, 0.035, 0.04, spine * 0.8))  # iliac marrow
        blobs.append(_cap((s * 0.1, 0.81, 0), (s * 0.09, 1.1, 0), 0.014, 0.012, spine * 0.7))
    blobs += _bowel(rng, dy)
    pelvis = _pelvis(rng, sex, bladder_y, bladder_ry)
    blobs += pelvis
    truth = {
        "myocardium_suv": round(float(heart), 2),
        "bladder_suv": round(float(bladder), 2),
        "bladder_y": bladder_y,
        "bladder_ry": bladder_ry,
        "liver_suv": liver,
        "liver_dy": dy,
        "spine_suv": spine,
    }
    return blobs, truth


def _bowel(rng: np.random.Generator, dy: float) -> list[Blob]:
    """Patchy small-bowel loops and a colon frame, occasionally intense (metformin)."""
    blobs = []
    for _ in range(int(rng.integers(4, 17))):
        sigma = rng.uniform(0.007, 0.02)
        x, y = rng.uniform(-0.1, 0.1), rng.uniform(0.6, 0.76) + dy
        blobs.append(
            _gauss(x, y, 0.03, sigma, _lu(rng, 1.2, 4.5), sy=sigma * rng.uniform(0.5, 1.5))
        )
    frame = [(-0.09, 0.71), (-0.1, 0.6), (-0.085, 0.572), (0.0, 0.61), (0.1, 0.56), (0.11, 0.68)]
    frame += [(0.06, 0.75), (0.0, 0.775)]
    pts = [
        (x + rng.uniform(-0.012, 0.012), y + dy + rng.uniform(-0.012, 0.012), 0.02)
        for x, y in frame
    ]
    metformin = rng.random() < 0.08
    if rng.random() < 0.55 or metformin:
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            value = _lu(rng, 4.0, 12.0) if metformin else _lu(rng, 1.1, 4.0)
            r = rng.uniform(0.007, 0.012)
            bends = [p0]
            for t in (0.33, 0.67):  # a wiggly loop, not a straight pipe
                bend = [
                    a + (b - a) * t + rng.uniform(-0.01, 0.01) for a, b in zip(p0, p1, strict=True)
                ]
                bends.append(tuple(bend))
            bends.append(p1)
            for q0, q1 in zip(bends[:-1], bends[1:], strict=True):
                blobs.append(_cap(q0, q1, r, r, value * rng.uniform(0.7, 1.0)))
    if rng.random() < 0.3:  # caecum
        blobs.append(_gauss(pts[0][0], pts[0][1], 0.02, 0.012, _lu(rng, 2.0, 7.0)))
    return blobs


def _pelvis(rng: np.random.Generator, sex: str, bladder_y: float, bladder_ry: float) -> list[Blob]:
    """Sex-specific pelvic uptake: prostate and genitals, or uterus and ovaries."""
    blobs = []
    if sex == "M":
        below = bladder_y + bladder_ry * rng.uniform(0.6, 1.1)
        blobs.append(_gauss(0.0, below, 0.0, 0.011, rng.uniform(1.2, 2.6)))  # normal prostate
        if rng.random() < 0.7:
            blobs.append(_ell(0.0, 0.878, 0.05, 0.02, 0.018, rng.uniform(1.3, 2.6)))  # testes
    else:
        if rng.random() < 0.3:  # endometrium
            blobs.append(
                _ell(0.0, bladder_y - bladder_ry * 0.9, -0.02, 0.028, 0.022, _lu(rng, 2.0, 7.0))
            )
        if rng.random() < 0.15:  # ovary
            s = rng.choice([-1, 1])
            blobs.append(_gauss(s * 0.045, bladder_y - 0.03, -0.02, 0.009, _lu(rng, 2.5, 8.0)))
    return blobs


def _breasts(rng: np.random.Generator, sex: str, marks: dict[str, Any]) -> list[tuple[float, ...]]:
    """Breast tissue (x, y, z, rx, ry, value) per side: always in women, sometimes in men."""
    if sex == "F":
        size = rng.uniform(0.04, 0.085) * marks["w"] * (1 + marks["fat"])
        value = rng.uniform(1.5, 2.6)
    elif rng.random() < 0.25:  # gynecomastia or a fatty chest
        size = rng.uniform(0.03, 0.06) * marks["w"] * (1 + marks["fat"])
        value = rng.uniform(1.1, 1.6)
    else:
        return []
    y = 0.395 + rng.uniform(-0.01, 0.025) + size * 0.25  # larger breasts sit lower
    sides = []
    for s in (-1, 1):
        x = s * (marks["chest"] * rng.uniform(0.5, 0.6))
        sides.append(
            (x, y, 0.1, size * rng.uniform(0.95, 1.05), size * rng.uniform(0.75, 0.92), value)
        )
    return sides


def _benign(rng: np.random.Generator, marks: dict[str, Any], sex: str) -> tuple[list[Blob], dict]:
    """Confounders drawn with the same odds in every class."""
    blobs: list[Blob] = []
    found = {"brown_fat": False, "muscle": False, "joint": False, "injection_site": False}
    if rng.random() < (0.13 if sex == "F" else 0.08):
        found["brown_fat"] = True
        value = _lu(rng, 2.0, 10.0)
        regions = [((0.03, 0.05), (0.2, 0.26)), ((0.08, 0.14), (0.26, 0.29))]
        regions += [((0.12, 0.155), (0.31, 0.37)), ((0.02, 0.03), (0.3, 0.5))]
        for k, ((x0, x1), (y0, y1)) in enumerate(regions):
            if k and rng.random() < 0.4:
                continue
            for _ in range(int(rng.integers(3, 10))):
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                v = value * rng.uniform(0.5, 1.0)
                blobs += [_gauss(s * x, y, 0.0, rng.uniform(0.004, 0.008), v) for s in (-1, 1)]
    if rng.random() < 0.12:
        found["muscle"] = True
        value = rng.uniform(1.6, 4.0)
        for s in (-1, 1):
            if rng.random() < 0.6:  # sternocleidomastoid
                blobs.append(
                    _cap((s * 0.04, 0.19, 0.02), (s * 0.02, 0.265, 0.04), 0.007, 0.006, value)
                )
            if rng.random() < 0.5:  # thigh adductors
                blobs.append(
                    _cap((s * 0.04, 0.86, 0), (s * 0.06, 1.1, 0), 0.018, 0.014, value * 0.9)
                )
            if rng.random() < 0.4:  # paravertebral
                blobs.append(
                    _cap((s * 0.025, 0.3, -0.08), (s * 0.03, 0.7, -0.08), 0.01, 0.012, value * 0.8)
                )
    if rng.random() < 0.12:
        found["joint"] = True
        value = rng.uniform(2.0, 5.0)
        sides = [-1, 1] if rng.random() < 0.6 else [int(rng.choice([-1, 1]))]
        for s in sides:
            if rng.random() < 0.6:
                blobs.append(_ell(s * marks["shoulder"], 0.295, 0.0, 0.02, 0.022, value))
            if rng.random() < 0.4:
                blobs.append(_gauss(s * 0.022, 0.278, 0.06, 0.007, value * 0.8))  # sternoclavicular
            if rng.random() < 0.4:
                blobs.append(_ell(s * 0.105, 0.805, 0.0, 0.018, 0.02, value * 0.8))  # hip
    if rng.random() < 0.06:
        found["injection_site"] = True
        s = int(rng.choice([-1, 1]))
        up = marks["arms_up_left" if s < 0 else "arms_up_right"]
        y = rng.uniform(0.02, 0.1) if up else rng.uniform(0.52, 0.6)
        x = s * (marks["shoulder"] if up else marks["waist"] + 0.05)
        blobs.append(_gauss(x, y, 0.0, rng.uniform(0.006, 0.014), _lu(rng, 3.0, 30.0)))
        if rng.random() < 0.4:  # reactive ipsilateral axillary node
            blobs.append(_gauss(s * (marks["chest"] - 0.01), 0.34, 0.0, 0.006, _lu(rng, 1.8, 4.0)))
    if rng.random() < 0.08:  # reactive cervical or inguinal nodes
        s = int(rng.choice([-1, 1]))
        x, y = (s * 0.04, 0.225) if rng.random() < 0.5 else (s * 0.085, 0.84)
        blobs.append(_gauss(x, y, 0.03, 0.006, rng.uniform(1.5, 3.5)))
    return blobs, found


def _sigma(diam_mm: float, mm_per_unit: float) -> float:
    """Gaussian sigma (units) of a lesion whose full width at half maximum is `diam_mm`."""
    return diam_mm / 2.355 / mm_per_unit


_BONE_SITES = (  # (x range, y range) of marrow-rich sites; x mirrored at random
    ((0.0, 0.0), (0.28, 0.71)),  # spine
    ((0.06, 0.11), (0.66, 0.74)),  # ilium
    ((0.07, 0.14), (0.32, 0.5)),  # ribs
    ((0.09, 0.1), (0.84, 0.95)),  # proximal femur
    ((0.0, 0.0), (0.33, 0.41)),  # sternum
    ((0.0, 0.03), (0.72, 0.76)),  # sacrum
)


def _bone_mets(rng, n: int, mmu: float, weights: Sequence[float]) -> list[Blob]:
    blobs = []
    for _ in range(n):
        (x0, x1), (y0, y1) = _BONE_SITES[int(rng.choice(len(_BONE_SITES), p=weights))]
        x = rng.uniform(x0, x1) * rng.choice([-1, 1])
        blobs.append(
            _gauss(x, rng.uniform(y0, y1), -0.05, _sigma(_lu(rng, 8, 30), mmu), _lu(rng, 2.5, 13))
        )
    return blobs


def _breast_cancer(rng, marks, breasts, organs, mmu) -> tuple[list[Blob], dict, list[Lesion]]:
    side = int(rng.choice([-1, 1]))
    bx, by, bz, rx, ry, tissue = breasts[0 if side < 0 else 1]
    x = bx + side * rng.uniform(-0.35, 0.75) * rx
    y = by + rng.uniform(-0.7, 0.5) * ry
    diam, suv = _lu(rng, 6.0, 35.0), max(_lu(rng, 1.6, 14.0), tissue * 1.3)
    blobs = [_gauss(x, y, bz, _sigma(diam, mmu), suv)]
    kinds = ["primary"]
    truth = {"primary_side": "left" if side > 0 else "right", "primary_diam_mm": round(diam, 1)}
    truth["primary_suv"] = round(suv, 2)
    nodes = int(rng.integers(1, 5)) if rng.random() < 0.55 else 0
    cx, cy = side * (marks["chest"] + rng.uniform(-0.035, 0.0)), rng.uniform(0.31, 0.36)
    for _ in range(nodes):
        px, py = cx + rng.uniform(-0.02, 0.02), cy + rng.uniform(-0.02, 0.02)
        blobs.append(_gauss(px, py, 0.0, _sigma(_lu(rng, 6, 22), mmu), _lu(rng, 1.8, 10.0)))
        kinds.append("axillary_node")
    if rng.random() < 0.1:  # internal mammary or supraclavicular node
        px, py = (
            (side * 0.03, rng.uniform(0.36, 0.42)) if rng.random() < 0.5 else (side * 0.09, 0.275)
        )
        blobs.append(_gauss(px, py, 0.05, _sigma(_lu(rng, 6, 15), mmu), _lu(rng, 2.0, 8.0)))
        kinds.append("chest_node")
    bone = int(rng.integers(1, 9)) if rng.random() < 0.15 else 0
    blobs += _bone_mets(rng, bone, mmu, (0.4, 0.15, 0.2, 0.1, 0.1, 0.05))
    kinds += ["bone_met"] * bone
    liver_n = int(rng.integers(1, 6)) if rng.random() < 0.07 else 0
    for _ in range(liver_n):
        px, py = rng.uniform(-0.14, 0.02), 0.5 + organs["liver_dy"] + rng.uniform(-0.04, 0.05)
        value = organs["liver_suv"] * rng.uniform(1.6, 3.5)
        blobs.append(_gauss(px, py, 0.0, _sigma(_lu(rng, 10, 35), mmu), value))
        kinds.append("liver_met")
    lung_n = int(rng.integers(1, 7)) if rng.random() < 0.07 else 0
    for _ in range(lung_n):
        px, py = rng.choice([-1, 1]) * rng.uniform(0.04, 0.13), rng.uniform(0.31, 0.46)
        blobs.append(_gauss(px, py, 0.0, _sigma(_lu(rng, 5, 18), mmu), _lu(rng, 1.5, 6.0)))
        kinds.append("lung_met")
    truth.update(axillary_nodes=nodes, bone_mets=bone, liver_mets=liver_n, lung_mets=lung_n)
    return blobs, truth, _lesions(blobs, kinds, mmu)


def _prostate_cancer(rng, organs, mmu) -> tuple[list[Blob], dict, list[Lesion]]:
    # Just below the bladder, partly overlapping it in projection.
    y = organs["bladder_y"] + organs["bladder_ry"] * rng.uniform(0.55, 1.2)
    x = rng.uniform(-0.012, 0.012)
    diam, suv = _lu(rng, 8.0, 30.0), _lu(rng, 2.5, 20.0)
    blobs = [_gauss(x, y, 0.0, _sigma(diam, mmu), suv)]
    kinds = ["primary"]
    truth = {
        "primary_side": "midline",
        "primary_diam_mm": round(diam, 1),
        "primary_suv": round(suv, 2),
    }
    nodes = int(rng.integers(1, 5)) if rng.random() < 0.3 else 0
    for _ in range(nodes):
        px, py = rng.choice([-1, 1]) * rng.uniform(0.04, 0.09), rng.uniform(0.68, 0.79)
        blobs.append(_gauss(px, py, -0.02, _sigma(_lu(rng, 6, 20), mmu), _lu(rng, 2.0, 10.0)))
        kinds.append("pelvic_node")
    if rng.random() < 0.1:  # para-aortic nodes
        for _ in range(int(rng.integers(1, 4))):
            px, py = rng.choice([-1, 1]) * rng.uniform(0.015, 0.03), rng.uniform(0.58, 0.66)
            blobs.append(_gauss(px, py, -0.04, _sigma(_lu(rng, 6, 16), mmu), _lu(rng, 2.0, 8.0)))
            kinds.append("para_aortic_node")
    bone = int(rng.integers(1, 13)) if rng.random() < 0.25 else 0
    blobs += _bone_mets(rng, bone, mmu, (0.35, 0.25, 0.12, 0.13, 0.05, 0.1))
    kinds += ["bone_met"] * bone
    truth.update(pelvic_nodes=nodes, bone_mets=bone)
    return blobs, truth, _lesions(blobs, kinds, mmu)


def _lesions(blobs: list[Blob], kinds: list[str], mmu: float) -> list[Lesion]:
    """Lesion records of drawn `gauss` blobs; the size back from sigma (`_sigma` inverted)."""
    return [
        Lesion(kind, blob, blob.rx * 2.355 * mmu) for blob, kind in zip(blobs, kinds, strict=True)
    ]


def build_anatomy(rng: np.random.Generator, kind: str) -> Anatomy:
    """Draw one synthetic patient of class `kind` (see `class_kind`)."""
    sex = {BREAST: "F", PROSTATE: "M"}.get(kind) or str(rng.choice(["F", "M"]))
    outline, marks = _outline(rng, sex)
    mmu = (
        MM_PER_UNIT
        * float(np.clip(rng.normal(1.0, 0.05), 0.85, 1.15))
        * (0.96 if sex == "F" else 1.0)
    )
    background = rng.uniform(0.45, 1.0)
    uptake = _head_neck(rng)
    trunk, organs = _trunk(rng, sex, marks)
    uptake += trunk
    breasts = _breasts(rng, sex, marks)
    for x, y, z, rx, ry, value in breasts:
        side = 1.0 if x > 0 else -1.0
        outline.append(_ell(x + side * rx * 0.3, y + ry * 0.1, z, rx * 0.85, ry * 0.85, 1.0))
        uptake.append(_ell(x, y, z, rx, ry, value * background * 0.8))
        uptake.append(_gauss(x, y + ry * 0.2, z, rx * 0.45, value * background, sy=ry * 0.4))
        if rng.random() < 0.3:  # nipple
            uptake.append(
                _gauss(x, y + ry * 0.2, z + 0.03, 0.004, rng.uniform(1.3, 2.5) * background)
            )
    benign, found = _benign(rng, marks, sex)
    uptake += benign
    truth: dict[str, Any] = {"sex": sex, "arms": marks["arms"], "habitus": round(marks["fat"], 3)}
    truth.update({k: v for k, v in organs.items() if k in ("myocardium_suv", "bladder_suv")})
    truth.update(found)
    lesions: list[Lesion] = []
    if kind == BREAST:
        blobs, extra, lesions = _breast_cancer(rng, marks, breasts, organs, mmu)
        uptake += blobs
        truth.update(extra)
    elif kind == PROSTATE:
        blobs, extra, lesions = _prostate_cancer(rng, organs, mmu)
        uptake += blobs
        truth.update(extra)
    primary = (lesions[0].blob.x, lesions[0].blob.y, lesions[0].blob.z) if lesions else None
    lungs = [_ell(s * 0.085, 0.385, 0.0, 0.068 * marks["w"], 0.1, 1.0) for s in (-1, 1)]
    scanner = {
        "fwhm_mm": rng.uniform(6.0, 9.5),
        "counts": _lu(rng, 4.0, 16.0),  # counts per SUV unit per pixel: the noise level
        "window": rng.uniform(4.5, 10.0),  # SUV shown as full black
        "gamma": rng.uniform(0.75, 1.1),
        "vertex": float(rng.random() < 0.55),  # field of view from the vertex, else skull base
        "mm_per_unit": mmu,
    }
    return Anatomy(
        outline=outline,
        lungs=lungs,
        uptake=uptake,
        background=background,
        lung_factor=rng.uniform(0.45, 0.8),
        half_width=marks["extent"],
        truth=truth,
        primary=primary,
        scanner=scanner,
        lesions=lesions,
    )


# --------------------------------------------------------------------------- rendering


class _Projector:
    """Anatomical (x, y, z) -> pixel (column, row) for one view."""

    def __init__(self, u, cx, top, y_top, angle, tilt, pivot):
        self.u, self.cx, self.top, self.y_top = u, cx, top, y_top
        self.cos, self.sin = np.cos(angle), np.sin(angle)
        self.tc, self.ts = np.cos(tilt), np.sin(tilt)
        self.pivot = pivot

    def __call__(self, x: float, y: float, z: float) -> tuple[float, float]:
        col = self.cx + (x * self.cos + z * self.sin) * self.u
        row = self.top + (y - self.y_top) * self.u
        dx, dy = col - self.pivot[0], row - self.pivot[1]
        return self.pivot[0] + dx * self.tc - dy * self.ts, self.pivot[
            1
        ] + dx * self.ts + dy * self.tc

    def half(self, rx: float, rz: float) -> float:
        """Projected semi-axis of an ellipsoid with semi-axes rx (across) and rz (depth)."""
        return float(np.hypot(rx * self.cos, rz * self.sin)) * self.u


def _window(img: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    h, w = img.shape
    x0, x1 = max(int(cx - rx), 0), min(int(np.ceil(cx + rx)) + 1, w)
    y0, y1 = max(int(cy - ry), 0), min(int(np.ceil(cy + ry)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
    return img[y0:y1, x0:x1], xs, ys


def _draw(img: np.ndarray, blob: Blob, proj: _Projector, value: float) -> None:
    """Max-combine one projected blob into `img` (a maximum-intensity projection)."""
    cx, cy = proj(blob.x, blob.y, blob.z)
    if blob.shape == "capsule":
        _draw_capsule(
            img,
            (cx, cy),
            proj(blob.x1, blob.y1, blob.z1),
            blob.rx * proj.u,
            blob.r1 * proj.u,
            value,
        )
        return
    rx, ry = max(proj.half(blob.rx, blob.rz), 0.35), max(blob.ry * proj.u, 0.35)
    reach = 3.5 if blob.shape == "gauss" else 1.0
    win = _window(img, cx, cy, rx * reach + 1, ry * reach + 1)
    if win is None:
        return
    sub, xs, ys = win
    r2 = (xs / rx) ** 2 + (ys / ry) ** 2
    if blob.shape == "gauss":
        profile = np.exp(-0.5 * r2)
    else:
        edge = np.clip((1.0 - np.sqrt(r2)) * min(rx, ry) + 0.5, 0.0, 1.0)
        if blob.shape == "ring":  # a wall brighter than the cavity it surrounds
            r = np.sqrt(r2)
            profile = edge * (0.6 + 0.4 * np.exp(-(((r - 0.78) / 0.2) ** 2)))
        else:
            profile = edge
    np.maximum(sub, (value * profile).astype(np.float32), out=sub)


def _draw_capsule(img, p0, p1, r0, r1, value) -> None:
    reach = max(r0, r1) + 1
    cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
    win = _window(img, cx, cy, abs(p1[0] - p0[0]) / 2 + reach, abs(p1[1] - p0[1]) / 2 + reach)
    if win is None:
        return
    sub, xs, ys = win
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(dx * dx + dy * dy, 1e-9)
    px, py = xs + cx - p0[0], ys + cy - p0[1]
    t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0)
    dist = np.hypot(px - t * dx, py - t * dy)
    radius = r0 + (r1 - r0) * t
    profile = np.clip(radius - dist + 0.5, 0.0, 1.0)
    np.maximum(sub, (value * profile).astype(np.float32), out=sub)


@dataclass(frozen=True)
class ViewSpec:
    """How one image of a patient is taken and saved."""

    height: int  # file pixels
    width: int
    upsample: float  # file rows per rendered row
    stretch: float  # file columns per file row of the rendered image (anisotropic display)
    angle_deg: float  # rotation about the body axis
    tilt_deg: float  # in-plane rotation of the patient on the table
    y_top: float  # anatomical level of the top of the image
    y_bottom: float
    shift: float  # horizontal offset of the body, fraction of the width
    counts: float
    window: float
    gamma: float
    fwhm_mm: float
    fmt: str
    quality: int


def draw_view(
    rng: np.random.Generator, anatomy: Anatomy, base_height: int, first: bool
) -> ViewSpec:
    """Random acquisition and export settings of one view; later views differ slightly."""
    sc = anatomy.scanner
    vertex = sc["vertex"] > 0.5
    height = int(round(base_height * rng.uniform(0.78, 1.3)))
    y_top = (rng.uniform(-0.03, 0.0) if vertex else rng.uniform(0.12, 0.16)) + rng.uniform(
        -0.01, 0.01
    )
    y_bottom = rng.uniform(0.97, 1.07)
    margin = rng.uniform(1.1, 1.5)  # white space beside the body
    aspect = 2 * anatomy.half_width * margin / ((y_bottom - y_top) * 1.02)
    stretch = rng.uniform(0.92, 1.08) if rng.random() < 0.3 else 1.0
    angle = rng.normal(0.0, 4.0) if first else rng.choice([-1, 1]) * rng.uniform(5.0, 22.0)
    names, probs = zip(*FORMATS, strict=True)
    return ViewSpec(
        height=height,
        width=max(16, int(round(height * aspect * stretch))),
        upsample=1.0 if rng.random() < 0.3 else rng.uniform(1.3, 2.4),
        stretch=float(stretch),
        angle_deg=float(angle),
        tilt_deg=float(rng.normal(0.0, 1.5)),
        y_top=float(y_top),
        y_bottom=float(y_bottom),
        shift=float(rng.uniform(-0.04, 0.04)),
        counts=sc["counts"] * rng.uniform(0.8, 1.25),
        window=sc["window"] * rng.uniform(0.9, 1.1),
        gamma=sc["gamma"],
        fwhm_mm=sc["fwhm_mm"],
        fmt=str(rng.choice(names, p=np.asarray(probs) / sum(probs))),
        quality=int(rng.integers(80, 96)),
    )


def render(
    rng: np.random.Generator,
    anatomy: Anatomy,
    view: ViewSpec,
    visible_contrast: float = DEFAULT_VISIBLE_CONTRAST,
) -> tuple[np.ndarray, dict, list[dict[str, Any]]]:
    """The displayed 8-bit grey image (file size) of one view, where the primary landed
    (the `.ground_truth.csv` columns) and every lesion's record (see `lesion_records`)."""
    rows = max(24, int(round(view.height / view.upsample)))
    cols = max(12, int(round(view.width / view.stretch / view.upsample)))
    u = rows / ((view.y_bottom - view.y_top) * 1.02)
    top = 0.01 * rows
    proj = _Projector(
        u=u,
        cx=cols * (0.5 + view.shift),
        top=top,
        y_top=view.y_top,
        angle=np.deg2rad(view.angle_deg),
        tilt=np.deg2rad(view.tilt_deg),
        pivot=(cols / 2, rows / 2),
    )
    body = np.zeros((rows, cols), np.float32)
    for blob in anatomy.outline:
        _draw(body, blob, proj, 1.0)
    lungs = np.zeros_like(body)
    for blob in anatomy.lungs:
        _draw(lungs, blob, proj, 1.0)
    thick = ndimage.gaussian_filter(body, sigma=0.025 * u)
    activity = anatomy.background * body * (0.55 + 0.6 * np.clip(thick, 0, 1))
    activity *= 1.0 - (1.0 - anatomy.lung_factor) * lungs
    # Lesions last: the projection is a maximum, so the drawing order does not change it.
    lesion_ids = {id(lesion.blob) for lesion in anatomy.lesions}
    for blob in anatomy.uptake:
        if id(blob) not in lesion_ids:
            _draw(activity, blob, proj, blob.value)
    without_lesions = activity.copy() if anatomy.lesions else activity
    for lesion in anatomy.lesions:
        _draw(activity, lesion.blob, proj, lesion.blob.value)
    px_mm = u / anatomy.scanner["mm_per_unit"]
    records = lesion_records(
        anatomy, view, proj, without_lesions, (rows, cols), px_mm, visible_contrast
    )
    activity = ndimage.gaussian_filter(activity, sigma=view.fwhm_mm / 2.355 * px_mm)
    counts = view.counts / max(px_mm * 4.0, 0.25) ** 2  # fewer counts in smaller pixels
    noisy = rng.poisson(np.clip(activity, 0, None) * counts).astype(np.float32) / counts
    noisy = ndimage.gaussian_filter(noisy, sigma=0.6)
    shade = np.clip(noisy / view.window, 0.0, 1.0) ** view.gamma
    grey = np.asarray(255.0 * (1.0 - shade), np.float32)
    image = Image.fromarray(np.round(grey).astype(np.uint8)).resize(
        (view.width, view.height), Image.Resampling.BILINEAR
    )
    where: dict[str, Any] = {}
    if anatomy.primary is not None:
        col, row = proj(*anatomy.primary)
        where = {
            "primary_col": int(round(col * view.width / cols)),
            "primary_row": int(round(row * view.height / rows)),
        }
    return np.asarray(image), where, records


def _shade(activity: np.ndarray, view: ViewSpec) -> np.ndarray:
    """Noise-free display values in [0, 1] (0 white, 1 full black), as `render` windows them."""
    return np.clip(activity / view.window, 0.0, 1.0) ** view.gamma


def lesion_records(
    anatomy: Anatomy,
    view: ViewSpec,
    proj: _Projector,
    without_lesions: np.ndarray,
    shape: tuple[int, int],
    px_mm: float,
    visible_contrast: float,
) -> list[dict[str, Any]]:
    """Where every lesion lands in the file's pixel grid, its size there, and its contrast.

    `col`, `row`: the lesion centre in file pixels (pixel centres at integers);
    `radius_col`, `radius_row`: half its FWHM in file pixels (files may be anisotropic);
    `contrast`: how much the lesion changes the noise-free display value (0 white .. 1
    black) at its centre, from the projection without it to the one with it, both blurred
    to the scanner's resolution. A lesion whose centre projects onto brighter uptake (a
    maximum-intensity projection keeps the larger value; e.g. a breast primary in front of
    a saturated myocardium, of which only a bulge at the edge may show), that lies outside
    the field of view or is too faint for the window scores 0 or little.
    `visible`: contrast >= `visible_contrast`.
    """
    rows, cols = shape
    sx, sy = view.width / cols, view.height / rows  # file pixels per rendered pixel
    blur = view.fwhm_mm / 2.355 * px_mm
    layers = []
    for lesion in anatomy.lesions:
        layer = np.zeros(shape, np.float32)
        _draw(layer, lesion.blob, proj, lesion.blob.value)
        layers.append(layer)
    records = []
    for k, lesion in enumerate(anatomy.lesions):
        col, row = proj(lesion.blob.x, lesion.blob.y, lesion.blob.z)
        radius = lesion.diam_mm / 2 * px_mm  # rendered pixels
        contrast = 0.0
        reach = int(np.ceil(radius + 4 * blur + 2))
        r0, r1 = max(int(row) - reach, 0), min(int(row) + reach + 2, rows)
        c0, c1 = max(int(col) - reach, 0), min(int(col) + reach + 2, cols)
        if r0 < r1 and c0 < c1:
            others = without_lesions[r0:r1, c0:c1].copy()
            for j, layer in enumerate(layers):
                if j != k:
                    np.maximum(others, layer[r0:r1, c0:c1], out=others)
            with_it = np.maximum(others, layers[k][r0:r1, c0:c1])
            diff = _shade(ndimage.gaussian_filter(with_it, blur), view) - _shade(
                ndimage.gaussian_filter(others, blur), view
            )
            at = np.array([[row - r0], [col - c0]])
            contrast = max(float(ndimage.map_coordinates(diff, at, order=1, mode="nearest")[0]), 0)
        records.append(
            {
                "lesion": k,
                "kind": lesion.kind,
                "col": round((col + 0.5) * sx - 0.5, 1),
                "row": round((row + 0.5) * sy - 0.5, 1),
                "diam_mm": round(lesion.diam_mm, 1),
                "radius_col": round(radius * sx, 2),
                "radius_row": round(radius * sy, 2),
                "px_per_mm_col": round(px_mm * sx, 4),
                "px_per_mm_row": round(px_mm * sy, 4),
                "suv": round(lesion.blob.value, 2),
                "contrast": round(contrast, 4),
                "in_view": bool(0 <= col < cols and 0 <= row < rows),
                "visible": contrast >= visible_contrast,
            }
        )
    return records


def encode(grey: np.ndarray, fmt: str, quality: int = 90) -> tuple[bytes, str]:
    """File bytes and extension of an 8-bit grey image in one of the `FORMATS`."""
    buffer = io.BytesIO()
    if fmt == "png-grey":
        Image.fromarray(grey, "L").save(buffer, format="PNG")
    elif fmt == "png-rgb":
        Image.fromarray(grey, "L").convert("RGB").save(buffer, format="PNG")
    elif fmt == "png-rgba":
        Image.fromarray(grey, "L").convert("RGBA").save(buffer, format="PNG")
    elif fmt == "png-grey16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, format="PNG")
    elif fmt in ("jpeg-grey", "jpeg-rgb"):
        image = Image.fromarray(grey, "L")
        image = image if fmt == "jpeg-grey" else image.convert("RGB")
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), ".jpg"
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {[f for f, _ in FORMATS]}")
    return buffer.getvalue(), ".png"


# --------------------------------------------------------------------------- generation


def _patient_rows(
    task: tuple[PatientPlan, int, int, str, str, float],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render and write every view of one patient (runs in a worker process).

    Returns the views' ground-truth rows and their lesions' rows.
    """
    plan, seed, base_height, write_dir, final_dir, visible_contrast = task
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(plan.index)]))
    anatomy = build_anatomy(rng, plan.kind)
    rows, lesion_rows = [], []
    for k in range(1, plan.views + 1):
        view = draw_view(rng, anatomy, base_height, first=k == 1)
        grey, where, lesions = render(rng, anatomy, view, visible_contrast)
        data, ext = encode(grey, view.fmt, view.quality)
        name = f"{plan.patient}_v{k}{ext}"
        target = Path(write_dir) / plan.folder / name
        target.write_bytes(data)
        path = (Path(final_dir) / plan.folder / name).as_posix()
        lesion_rows += [{"path": path, "patient": plan.patient, "view": k, **r} for r in lesions]
        rows.append(
            {
                "path": path,
                "folder": plan.folder,
                "patient": plan.patient,
                "view": k,
                "format": view.fmt,
                "height": view.height,
                "width": view.width,
                "angle_deg": round(view.angle_deg, 2),
                **anatomy.truth,
                **where,
            }
        )
    return rows, lesion_rows


def _prepare_out(out_dir: Path, force: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(
            f"{out_dir} exists and is not a folder: remove it or pass another --out"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(
            f"{out_dir} is not empty: pass --force (force=True) to replace it, "
            "or choose another --out"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def generate(
    out_dir: str | Path,
    counts: dict[str, int],
    seed: int,
    images_per_patient: Sequence[int] = (1, 3),
    base_height: int = 512,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    visible_contrast: float = DEFAULT_VISIBLE_CONTRAST,
    prefix: str = DEMO_PATIENT_PREFIX,
) -> pd.DataFrame:
    """Write the synthetic data set to `out_dir/<folder>/<patient>_v<k>.<ext>`.

    Files are written into a temporary folder beside `out_dir` and renamed into place at
    the end, so `out_dir` is either the old data or the complete new set. A non-empty
    `out_dir` is replaced only when `force` is true. Returns one row per file (path,
    folder, patient, view, format, size and ground truth), also written to
    `out_dir/.ground_truth.csv`. Every lesion of every file (position and size in that
    file's pixels, contrast, `visible` when contrast >= `visible_contrast`) goes to
    `out_dir/.lesions.csv`; `visible_contrast` changes that file only, never an image.
    """
    out_dir = Path(out_dir)
    plans = plan_patients(counts, seed, images_per_patient, prefix)
    tmp = _prepare_out(out_dir, force)
    try:
        for folder in counts:
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        tasks = [
            (plan, int(seed), int(base_height), str(tmp), str(out_dir), float(visible_contrast))
            for plan in plans
        ]
        workers = max(1, int(workers or os.cpu_count() or 1))
        bar = tqdm(
            total=sum(p.views for p in plans), unit="img", desc="generate", disable=not progress
        )
        rows: list[dict[str, Any]] = []
        lesion_rows: list[dict[str, Any]] = []
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            results = (
                pool.imap(_patient_rows, tasks, chunksize=4) if pool else map(_patient_rows, tasks)
            )
            for views, lesions in results:
                rows += views
                lesion_rows += lesions
                bar.update(len(views))
        bar.close()
        frame = pd.DataFrame(rows).sort_values(["folder", "patient", "view"], ignore_index=True)
        frame.to_csv(tmp / TRUTH_FILE, index=False)
        lesions = pd.DataFrame(lesion_rows, columns=LESION_COLUMNS)
        lesions.sort_values(["path", "lesion"], ignore_index=True).to_csv(
            tmp / LESIONS_FILE, index=False
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return frame


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Counts multiplied by `scale`, rounded (used for a larger memory benchmark)."""
    if scale <= 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return {folder: int(round(int(n) * scale)) for folder, n in counts.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="petscan generate",
        description="Generate the synthetic whole-body PET demo data set "
        "(params section `synthetic`).",
    )
    parser.add_argument(
        "--params", default=config.PARAMS_FILE, help="params file (default: %(default)s)"
    )
    parser.add_argument("--out", help="output folder (default: synthetic.out_dir)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every class count (default: 1)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: synthetic.seed)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all CPU cores)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when the output folder exists"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@reports_user_errors("petscan generate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_section("synthetic", args.params)
    out_dir = Path(args.out or params["out_dir"])
    if args.if_missing and out_dir.exists():
        print(f"{out_dir} exists: not generating demo data")
        return 0
    counts = scaled_counts(params["counts"], args.scale)
    seed = int(params["seed"] if args.seed is None else args.seed)
    start = time.perf_counter()
    try:
        frame = generate(
            out_dir,
            counts,
            seed,
            images_per_patient=params["images_per_patient"],
            base_height=int(params["base_height"]),
            workers=args.workers,
            force=args.force,
            progress=not args.quiet,
            visible_contrast=float(params["visible_contrast"]),
        )
    except (FileExistsError, ValueError) as err:  # a user error (exit 1), see petscan.errors
        raise UserError(str(err)) from None
    seconds = time.perf_counter() - start
    per_folder = frame.groupby("folder")["path"].count().to_dict()
    patients = frame["patient"].nunique()
    print(f"wrote {len(frame)} images of {patients} synthetic patients to {out_dir}", end=" ")
    print(f"in {seconds:.1f} s")
    for folder, n in per_folder.items():
        people = frame.loc[frame.folder == folder, "patient"].nunique()
        print(f"  {folder}: {n} images, {people} patients")
    print(f"  formats: {frame['format'].value_counts().to_dict()}")
    print(f"  ground truth: {out_dir / TRUTH_FILE}, every lesion: {out_dir / LESIONS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
