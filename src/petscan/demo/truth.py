"""What a synthetic patient has and the files that say so: the ground truth of the demo set.

The class of a patient (from its folder's name), its lesions (the cancers: where they are,
how large, how intense), the benign confounders drawn alike in every class, and the two
hidden files `demo.generate` writes beside the images: `.ground_truth.csv` (one row per
file) and `.lesions.csv` (every lesion of every file, read by the explain stage's
localization scores and by the demo backbone's pretraining).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from petscan.demo.shapes import Blob, capsule, ellipse, gauss, log_uniform

NORMAL, BREAST, PROSTATE = "normal", "breast", "prostate"


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


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion (a `gauss` blob of `uptake`) and what it is."""

    kind: str  # primary | axillary_node | chest_node | pelvic_node | para_aortic_node | *_met
    blob: Blob
    diam_mm: float  # full width at half maximum


def benign_findings(
    rng: np.random.Generator, marks: dict[str, Any], sex: str
) -> tuple[list[Blob], dict]:
    """Confounders drawn with the same odds in every class."""
    blobs: list[Blob] = []
    found = {"brown_fat": False, "muscle": False, "joint": False, "injection_site": False}
    if rng.random() < (0.13 if sex == "F" else 0.08):
        found["brown_fat"] = True
        value = log_uniform(rng, 2.0, 10.0)
        regions = [((0.03, 0.05), (0.2, 0.26)), ((0.08, 0.14), (0.26, 0.29))]
        regions += [((0.12, 0.155), (0.31, 0.37)), ((0.02, 0.03), (0.3, 0.5))]
        for k, ((x0, x1), (y0, y1)) in enumerate(regions):
            if k and rng.random() < 0.4:
                continue
            for _ in range(int(rng.integers(3, 10))):
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                v = value * rng.uniform(0.5, 1.0)
                blobs += [gauss(s * x, y, 0.0, rng.uniform(0.004, 0.008), v) for s in (-1, 1)]
    if rng.random() < 0.12:
        found["muscle"] = True
        value = rng.uniform(1.6, 4.0)
        for s in (-1, 1):
            if rng.random() < 0.6:  # sternocleidomastoid
                blobs.append(
                    capsule((s * 0.04, 0.19, 0.02), (s * 0.02, 0.265, 0.04), 0.007, 0.006, value)
                )
            if rng.random() < 0.5:  # thigh adductors
                blobs.append(
                    capsule((s * 0.04, 0.86, 0), (s * 0.06, 1.1, 0), 0.018, 0.014, value * 0.9)
                )
            if rng.random() < 0.4:  # paravertebral
                blobs.append(
                    capsule(
                        (s * 0.025, 0.3, -0.08), (s * 0.03, 0.7, -0.08), 0.01, 0.012, value * 0.8
                    )
                )
    if rng.random() < 0.12:
        found["joint"] = True
        value = rng.uniform(2.0, 5.0)
        sides = [-1, 1] if rng.random() < 0.6 else [int(rng.choice([-1, 1]))]
        for s in sides:
            if rng.random() < 0.6:
                blobs.append(ellipse(s * marks["shoulder"], 0.295, 0.0, 0.02, 0.022, value))
            if rng.random() < 0.4:
                blobs.append(gauss(s * 0.022, 0.278, 0.06, 0.007, value * 0.8))  # sternoclavicular
            if rng.random() < 0.4:
                blobs.append(ellipse(s * 0.105, 0.805, 0.0, 0.018, 0.02, value * 0.8))  # hip
    if rng.random() < 0.06:
        found["injection_site"] = True
        s = int(rng.choice([-1, 1]))
        up = marks["arms_up_left" if s < 0 else "arms_up_right"]
        y = rng.uniform(0.02, 0.1) if up else rng.uniform(0.52, 0.6)
        x = s * (marks["shoulder"] if up else marks["waist"] + 0.05)
        blobs.append(gauss(x, y, 0.0, rng.uniform(0.006, 0.014), log_uniform(rng, 3.0, 30.0)))
        if rng.random() < 0.4:  # reactive ipsilateral axillary node
            blobs.append(
                gauss(s * (marks["chest"] - 0.01), 0.34, 0.0, 0.006, log_uniform(rng, 1.8, 4.0))
            )
    if rng.random() < 0.08:  # reactive cervical or inguinal nodes
        s = int(rng.choice([-1, 1]))
        x, y = (s * 0.04, 0.225) if rng.random() < 0.5 else (s * 0.085, 0.84)
        blobs.append(gauss(x, y, 0.03, 0.006, rng.uniform(1.5, 3.5)))
    return blobs, found


def lesion_sigma(diam_mm: float, mm_per_unit: float) -> float:
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
            gauss(
                x,
                rng.uniform(y0, y1),
                -0.05,
                lesion_sigma(log_uniform(rng, 8, 30), mmu),
                log_uniform(rng, 2.5, 13),
            )
        )
    return blobs


def breast_cancer(rng, marks, breasts, organs, mmu) -> tuple[list[Blob], dict, list[Lesion]]:
    side = int(rng.choice([-1, 1]))
    bx, by, bz, rx, ry, tissue = breasts[0 if side < 0 else 1]
    x = bx + side * rng.uniform(-0.35, 0.75) * rx
    y = by + rng.uniform(-0.7, 0.5) * ry
    diam, suv = log_uniform(rng, 6.0, 35.0), max(log_uniform(rng, 1.6, 14.0), tissue * 1.3)
    blobs = [gauss(x, y, bz, lesion_sigma(diam, mmu), suv)]
    kinds = ["primary"]
    truth = {"primary_side": "left" if side > 0 else "right", "primary_diam_mm": round(diam, 1)}
    truth["primary_suv"] = round(suv, 2)
    nodes = int(rng.integers(1, 5)) if rng.random() < 0.55 else 0
    cx, cy = side * (marks["chest"] + rng.uniform(-0.035, 0.0)), rng.uniform(0.31, 0.36)
    for _ in range(nodes):
        px, py = cx + rng.uniform(-0.02, 0.02), cy + rng.uniform(-0.02, 0.02)
        blobs.append(
            gauss(
                px, py, 0.0, lesion_sigma(log_uniform(rng, 6, 22), mmu), log_uniform(rng, 1.8, 10.0)
            )
        )
        kinds.append("axillary_node")
    if rng.random() < 0.1:  # internal mammary or supraclavicular node
        px, py = (
            (side * 0.03, rng.uniform(0.36, 0.42)) if rng.random() < 0.5 else (side * 0.09, 0.275)
        )
        blobs.append(
            gauss(
                px, py, 0.05, lesion_sigma(log_uniform(rng, 6, 15), mmu), log_uniform(rng, 2.0, 8.0)
            )
        )
        kinds.append("chest_node")
    bone = int(rng.integers(1, 9)) if rng.random() < 0.15 else 0
    blobs += _bone_mets(rng, bone, mmu, (0.4, 0.15, 0.2, 0.1, 0.1, 0.05))
    kinds += ["bone_met"] * bone
    liver_n = int(rng.integers(1, 6)) if rng.random() < 0.07 else 0
    for _ in range(liver_n):
        px, py = rng.uniform(-0.14, 0.02), 0.5 + organs["liver_dy"] + rng.uniform(-0.04, 0.05)
        value = organs["liver_suv"] * rng.uniform(1.6, 3.5)
        blobs.append(gauss(px, py, 0.0, lesion_sigma(log_uniform(rng, 10, 35), mmu), value))
        kinds.append("liver_met")
    lung_n = int(rng.integers(1, 7)) if rng.random() < 0.07 else 0
    for _ in range(lung_n):
        px, py = rng.choice([-1, 1]) * rng.uniform(0.04, 0.13), rng.uniform(0.31, 0.46)
        blobs.append(
            gauss(
                px, py, 0.0, lesion_sigma(log_uniform(rng, 5, 18), mmu), log_uniform(rng, 1.5, 6.0)
            )
        )
        kinds.append("lung_met")
    truth.update(axillary_nodes=nodes, bone_mets=bone, liver_mets=liver_n, lung_mets=lung_n)
    return blobs, truth, _lesions(blobs, kinds, mmu)


def prostate_cancer(rng, organs, mmu) -> tuple[list[Blob], dict, list[Lesion]]:
    # Just below the bladder, partly overlapping it in projection.
    y = organs["bladder_y"] + organs["bladder_ry"] * rng.uniform(0.55, 1.2)
    x = rng.uniform(-0.012, 0.012)
    diam, suv = log_uniform(rng, 8.0, 30.0), log_uniform(rng, 2.5, 20.0)
    blobs = [gauss(x, y, 0.0, lesion_sigma(diam, mmu), suv)]
    kinds = ["primary"]
    truth = {
        "primary_side": "midline",
        "primary_diam_mm": round(diam, 1),
        "primary_suv": round(suv, 2),
    }
    nodes = int(rng.integers(1, 5)) if rng.random() < 0.3 else 0
    for _ in range(nodes):
        px, py = rng.choice([-1, 1]) * rng.uniform(0.04, 0.09), rng.uniform(0.68, 0.79)
        blobs.append(
            gauss(
                px,
                py,
                -0.02,
                lesion_sigma(log_uniform(rng, 6, 20), mmu),
                log_uniform(rng, 2.0, 10.0),
            )
        )
        kinds.append("pelvic_node")
    if rng.random() < 0.1:  # para-aortic nodes
        for _ in range(int(rng.integers(1, 4))):
            px, py = rng.choice([-1, 1]) * rng.uniform(0.015, 0.03), rng.uniform(0.58, 0.66)
            blobs.append(
                gauss(
                    px,
                    py,
                    -0.04,
                    lesion_sigma(log_uniform(rng, 6, 16), mmu),
                    log_uniform(rng, 2.0, 8.0),
                )
            )
            kinds.append("para_aortic_node")
    bone = int(rng.integers(1, 13)) if rng.random() < 0.25 else 0
    blobs += _bone_mets(rng, bone, mmu, (0.35, 0.25, 0.12, 0.13, 0.05, 0.1))
    kinds += ["bone_met"] * bone
    truth.update(pelvic_nodes=nodes, bone_mets=bone)
    return blobs, truth, _lesions(blobs, kinds, mmu)


def _lesions(blobs: list[Blob], kinds: list[str], mmu: float) -> list[Lesion]:
    """Lesion records of drawn `gauss` blobs; the size back from sigma (`lesion_sigma` inverted)."""
    return [
        Lesion(kind, blob, blob.rx * 2.355 * mmu) for blob, kind in zip(blobs, kinds, strict=True)
    ]
