"""The body model of a synthetic patient: outline, organs and their physiological uptake.

Coordinates are anatomical units: `y` runs from the vertex (0) to mid-thigh (1), `x` to the
image right (the patient's left), `z` to the front. `build_anatomy` draws one patient of a
class: body, organs, benign findings and, for the cancer classes, the lesions
(`demo.truth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from petscan.demo.shapes import Blob, capsule, ellipse, gauss, log_uniform
from petscan.demo.truth import (
    BREAST,
    PROSTATE,
    Lesion,
    benign_findings,
    breast_cancer,
    prostate_cancer,
)

MM_PER_UNIT = 1100.0  # vertex to mid-thigh of an average adult, in millimetres


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
    blobs = [ellipse(0.0, 0.1, 0.0, 0.068 * (0.95 + 0.1 * w), 0.098, 1.0)]
    blobs.append(capsule((0, 0.17, 0), (0, 0.27, 0), 0.05 * w, 0.055 * w, 1.0))
    for (y0, h0), (y1, h1) in zip(torso[:-1], torso[1:], strict=True):
        r0, r1 = 0.06 * w, 0.06 * w
        blobs.append(capsule((0, y0, 0), (0, y1, 0), r0, r1, 1.0))
        blobs.append(capsule((-(h0 - r0), y0, 0), (-(h1 - r1), y1, 0), r0, r1, 1.0))
        blobs.append(capsule((h0 - r0, y0, 0), (h1 - r1, y1, 0), r0, r1, 1.0))
    thigh = 0.072 * w * hips
    for s in (-1, 1):
        blobs.append(
            capsule(
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
        blobs.append(capsule((s * shoulder, 0.3, 0), elbow, 0.042 * w, 0.034 * w, 1.0))
        blobs.append(capsule(elbow, hand, 0.034 * w, 0.026 * w, 1.0))
        if not up:
            blobs.append(ellipse(hand[0], hand[1] + 0.05, 0.0, 0.028 * w, 0.05, 1.0))
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
        ellipse(0.0, 0.158, -0.03, 0.043, 0.022, brain * rng.uniform(0.65, 0.85)),
        ellipse(0.0, 0.152, 0.06, 0.022, 0.012, rng.uniform(1.3, 3.0)),  # tongue / mouth
    ]
    parotid, submandibular, tonsil = (
        log_uniform(rng, 1.3, 3.8),
        log_uniform(rng, 1.3, 3.5),
        log_uniform(rng, 1.5, 6.5),
    )
    for s in (-1, 1):
        jitter = rng.uniform(0.85, 1.15)
        blobs.append(ellipse(s * 0.052, 0.155, -0.01, 0.013, 0.022, parotid * jitter))
        blobs.append(ellipse(s * 0.032, 0.19, 0.03, 0.01, 0.009, submandibular * jitter))
        blobs.append(gauss(s * 0.014, 0.178, 0.0, 0.006, tonsil * rng.uniform(0.8, 1.2)))
    if rng.random() < 0.12:  # diffuse thyroid uptake
        value = log_uniform(rng, 1.8, 5.0)
        blobs += [ellipse(s * 0.012, 0.237, 0.03, 0.008, 0.014, value) for s in (-1, 1)]
    if rng.random() < 0.15:  # vocal cords
        blobs.append(gauss(0.0, 0.222, 0.03, 0.004, rng.uniform(2.0, 4.0)))
    return blobs


def _trunk(rng: np.random.Generator, sex: str, marks: dict[str, Any]) -> tuple[list[Blob], dict]:
    """Organs from the mediastinum to the pelvis, with their physiological range."""
    blood = rng.uniform(1.3, 2.2)
    heart_mode = rng.choice(["suppressed", "moderate", "high"], p=[0.35, 0.3, 0.35])
    heart = {
        "suppressed": rng.uniform(1.0, 2.4),
        "moderate": rng.uniform(3.0, 6.0),
        "high": log_uniform(rng, 6.0, 16.0),
    }[str(heart_mode)]
    hx, hy = 0.035 + rng.uniform(-0.01, 0.01), 0.415 + rng.uniform(-0.015, 0.015)
    blobs = [
        capsule((0.0, 0.3, 0.0), (0.02, 0.36, 0.02), 0.012, 0.014, blood),  # aortic arch / SVC
        capsule((0.02, 0.36, -0.04), (0.0, 0.62, -0.05), 0.011, 0.01, blood * 0.9),  # aorta
        ellipse(hx - 0.015, hy - 0.01, 0.0, 0.045, 0.04, blood),  # cardiac blood pool
        Blob("ring", hx, hy, 0.03, 0.047, 0.042, 0.045, max(heart, blood)),
    ]
    liver = rng.uniform(1.8, 3.0)
    dy = rng.uniform(-0.015, 0.02)
    blobs += [
        ellipse(-0.07, 0.495 + dy, 0.0, 0.095, 0.058, liver),
        ellipse(-0.005, 0.475 + dy, 0.02, 0.07, 0.035, liver),
        ellipse(-0.1, 0.53 + dy, 0.0, 0.06, 0.05, liver),
        ellipse(0.112, 0.495 + dy, -0.04, 0.027, 0.045, liver * rng.uniform(0.75, 1.05)),  # spleen
    ]
    blobs += [
        gauss(rng.uniform(-0.12, 0.02), 0.49 + dy + rng.uniform(-0.03, 0.03), 0, 0.02, liver * 1.08)
        for _ in range(3)
    ]
    if rng.random() < 0.4:  # stomach wall
        blobs.append(ellipse(0.075, 0.475 + dy, 0.04, 0.04, 0.03, log_uniform(rng, 1.3, 4.0)))
    for s, ky in ((1, 0.56), (-1, 0.575)):
        ky += dy
        blobs.append(ellipse(s * 0.068, ky, -0.05, 0.026, 0.048, rng.uniform(2.2, 5.0)))
        blobs.append(gauss(s * 0.058, ky + 0.005, -0.04, 0.011, log_uniform(rng, 2.0, 25.0)))
        if rng.random() < 0.35:  # ureter, patchy with peristalsis
            pts = [(s * 0.055, ky + 0.03, -0.04), (s * 0.045, 0.7, -0.03), (s * 0.035, 0.775, 0.0)]
            for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
                blobs.append(capsule(p0, p1, 0.003, 0.003, log_uniform(rng, 1.2, 6.0)))
    bladder_y = 0.79 + rng.uniform(-0.012, 0.018)
    bladder_rx = rng.uniform(0.022, 0.065)
    bladder_ry = bladder_rx * rng.uniform(0.6, 0.95)
    bladder = log_uniform(rng, 2.5, 100.0)
    blobs.append(ellipse(0.0, bladder_y, 0.02, bladder_rx, bladder_ry, bladder))
    spine = rng.uniform(1.1, 2.2)
    blobs += [
        capsule((0, 0.27, -0.06), (0, 0.71, -0.06), 0.011, 0.013, spine),
        capsule((0, 0.32, 0.08), (0, 0.42, 0.08), 0.009, 0.009, spine * 0.8),  # sternum
        ellipse(0.0, 0.735, -0.06, 0.025, 0.03, spine * 0.85),  # sacrum
    ]
    for s in (-1, 1):
        blobs.append(ellipse(s * 0.085, 0.695, -0.05, 0.035, 0.04, spine * 0.8))  # iliac marrow
        blobs.append(capsule((s * 0.1, 0.81, 0), (s * 0.09, 1.1, 0), 0.014, 0.012, spine * 0.7))
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
            gauss(x, y, 0.03, sigma, log_uniform(rng, 1.2, 4.5), sy=sigma * rng.uniform(0.5, 1.5))
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
            value = log_uniform(rng, 4.0, 12.0) if metformin else log_uniform(rng, 1.1, 4.0)
            r = rng.uniform(0.007, 0.012)
            bends = [p0]
            for t in (0.33, 0.67):  # a wiggly loop, not a straight pipe
                bend = [
                    a + (b - a) * t + rng.uniform(-0.01, 0.01) for a, b in zip(p0, p1, strict=True)
                ]
                bends.append(tuple(bend))
            bends.append(p1)
            for q0, q1 in zip(bends[:-1], bends[1:], strict=True):
                blobs.append(capsule(q0, q1, r, r, value * rng.uniform(0.7, 1.0)))
    if rng.random() < 0.3:  # caecum
        blobs.append(gauss(pts[0][0], pts[0][1], 0.02, 0.012, log_uniform(rng, 2.0, 7.0)))
    return blobs


def _pelvis(rng: np.random.Generator, sex: str, bladder_y: float, bladder_ry: float) -> list[Blob]:
    """Sex-specific pelvic uptake: prostate and genitals, or uterus and ovaries."""
    blobs = []
    if sex == "M":
        below = bladder_y + bladder_ry * rng.uniform(0.6, 1.1)
        blobs.append(gauss(0.0, below, 0.0, 0.011, rng.uniform(1.2, 2.6)))  # normal prostate
        if rng.random() < 0.7:
            blobs.append(ellipse(0.0, 0.878, 0.05, 0.02, 0.018, rng.uniform(1.3, 2.6)))  # testes
    else:
        if rng.random() < 0.3:  # endometrium
            blobs.append(
                ellipse(
                    0.0,
                    bladder_y - bladder_ry * 0.9,
                    -0.02,
                    0.028,
                    0.022,
                    log_uniform(rng, 2.0, 7.0),
                )
            )
        if rng.random() < 0.15:  # ovary
            s = rng.choice([-1, 1])
            blobs.append(
                gauss(s * 0.045, bladder_y - 0.03, -0.02, 0.009, log_uniform(rng, 2.5, 8.0))
            )
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
        outline.append(ellipse(x + side * rx * 0.3, y + ry * 0.1, z, rx * 0.85, ry * 0.85, 1.0))
        uptake.append(ellipse(x, y, z, rx, ry, value * background * 0.8))
        uptake.append(gauss(x, y + ry * 0.2, z, rx * 0.45, value * background, sy=ry * 0.4))
        if rng.random() < 0.3:  # nipple
            uptake.append(
                gauss(x, y + ry * 0.2, z + 0.03, 0.004, rng.uniform(1.3, 2.5) * background)
            )
    benign, found = benign_findings(rng, marks, sex)
    uptake += benign
    truth: dict[str, Any] = {"sex": sex, "arms": marks["arms"], "habitus": round(marks["fat"], 3)}
    truth.update({k: v for k, v in organs.items() if k in ("myocardium_suv", "bladder_suv")})
    truth.update(found)
    lesions: list[Lesion] = []
    if kind == BREAST:
        blobs, extra, lesions = breast_cancer(rng, marks, breasts, organs, mmu)
        uptake += blobs
        truth.update(extra)
    elif kind == PROSTATE:
        blobs, extra, lesions = prostate_cancer(rng, organs, mmu)
        uptake += blobs
        truth.update(extra)
    primary = (lesions[0].blob.x, lesions[0].blob.y, lesions[0].blob.z) if lesions else None
    lungs = [ellipse(s * 0.085, 0.385, 0.0, 0.068 * marks["w"], 0.1, 1.0) for s in (-1, 1)]
    scanner = {
        "fwhm_mm": rng.uniform(6.0, 9.5),
        "counts": log_uniform(rng, 4.0, 16.0),  # counts per SUV unit per pixel: the noise level
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
