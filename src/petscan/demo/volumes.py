"""`petscan generate --volumes`: the synthetic patients as 3-D PET studies for `ingest`.

The same body model as the demo images (`demo.anatomy`) is voxelized into a small SUV
volume (`synthetic.volumes.voxel_mm`, RAS+), then written the way scanners and public data
sets store PET, one convention per study in turn, so that `ingest` meets each of them:

- DICOM BQML / START, BQML / ADMIN, BQML / NONE (one frame per slice);
- DICOM CNTS with the Philips SUV factor (7053,1000);
- DICOM BQML / START with a SeriesTime after the acquisition (a re-reconstruction);
- DICOM BQML / START injected before midnight, RadiopharmaceuticalStartTime only;
- DICOM without PatientWeight, the weight given in the labels table;
- NIfTI in SUV stored RAS, and stored LPS.

The stored values are the SUV divided by each convention's factor (computed here from the
written dose, weight and times), so an exact reader recovers the voxelized SUV. Writes
`ingest.source_dir/<study>/...` and the labels table `ingest.labels` (study, class, and
the supplied weight where the header lacks it); the class comes only from that table.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from petscan.demo.anatomy import MM_PER_UNIT, Anatomy, build_anatomy
from petscan.demo.dicom_pet import PetSeriesSpec, write_pet_series
from petscan.demo.generate import plan_patients
from petscan.demo.shapes import Blob

CONVENTIONS = (
    "bqml_start",
    "bqml_admin",
    "bqml_none",
    "cnts_philips",
    "series_after_acquisition",
    "injection_before_midnight",
    "weight_in_labels",
    "nifti_ras",
    "nifti_lps",
)
HALF_LIFE_S = 6586.2  # F-18
VOLUME_PREFIX = "vol"  # patient ids vol-00001, ...: apart from the demo images' pet-...


def voxelize(anatomy: Anatomy, voxel_mm: float) -> np.ndarray:
    """The patient's SUV as a float32 RAS+ volume (`[R, A, S]`), vertex to mid-thigh."""
    unit = voxel_mm / anatomy.scanner.get("mm_per_unit", MM_PER_UNIT)
    half_x = anatomy.half_width * 1.15
    nx, ny, nz = int(2 * half_x / unit) + 1, int(0.5 / unit) + 1, int(1.05 / unit) + 1
    # anatomical units of each voxel centre: x to the patient's left, y down, z to the front
    xs = -(np.arange(nx) - (nx - 1) / 2) * unit  # RAS i grows to the Right
    zs = (np.arange(ny) - (ny - 1) / 2) * unit  # RAS j grows Anterior
    ys = (nz - 1 - np.arange(nz)) * unit - 0.02  # RAS k grows Superior: the vertex on top
    grid = np.meshgrid(xs, zs, ys, indexing="ij")
    body = np.zeros((nx, ny, nz), np.float32)
    for blob in anatomy.outline:
        np.maximum(body, _profile(blob, grid), out=body)
    lungs = np.zeros_like(body)
    for blob in anatomy.lungs:
        np.maximum(lungs, _profile(blob, grid), out=lungs)
    suv = anatomy.background * body * (1.0 - (1.0 - anatomy.lung_factor) * lungs)
    for blob in anatomy.uptake + [lesion.blob for lesion in anatomy.lesions]:
        np.maximum(suv, blob.value * _profile(blob, grid), out=suv)
    return suv.astype(np.float32)


def _profile(blob: Blob, grid: list[np.ndarray]) -> np.ndarray:
    """The blob's 0..1 profile at the voxel centres `grid` (x, z, y in anatomical units)."""
    x, z, y = grid
    if blob.shape == "capsule":
        p0 = np.array([blob.x, blob.y, blob.z])
        d = np.array([blob.x1, blob.y1, blob.z1]) - p0
        px, py, pz = x - p0[0], y - p0[1], z - p0[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-12), 0.0, 1.0)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        return (dist <= blob.rx + (blob.r1 - blob.rx) * t).astype(np.float32)
    r2 = ((x - blob.x) / blob.rx) ** 2 + ((y - blob.y) / blob.ry) ** 2
    r2 = r2 + ((z - blob.z) / max(blob.rz, 1e-6)) ** 2
    if blob.shape == "gauss":
        return np.exp(-0.5 * r2).astype(np.float32)
    return (r2 <= 1.0).astype(np.float32)


def write_study(
    folder: Path,
    suv: np.ndarray,
    convention: str,
    patient: str,
    voxel_mm: float,
    rng: np.random.Generator,
) -> str | None:
    """Write one study in `convention`; the weight (kg, as text) the labels table must give."""
    import nibabel as nib

    spacing = (voxel_mm, voxel_mm, voxel_mm)
    if convention.startswith("nifti"):
        folder.mkdir(parents=True, exist_ok=True)
        affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
        data = suv
        if convention == "nifti_lps":  # the same voxels stored flipped in x and y
            affine[:2, :2] *= -1
            affine[:2, 3] = [(suv.shape[0] - 1) * voxel_mm, (suv.shape[1] - 1) * voxel_mm]
            data = suv[::-1, ::-1]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), folder / "SUV.nii.gz")
        return None
    weight = round(float(rng.uniform(50, 110)), 1)
    dose = float(rng.uniform(2.0e8, 4.0e8))
    day = datetime(2024, 3, 5) + timedelta(days=int(rng.integers(0, 300)))
    injection = day + timedelta(seconds=round(float(rng.uniform(8, 15)) * 3600))  # DICOM TM: s
    uptake = timedelta(seconds=round(float(rng.uniform(50, 80)) * 60))
    spec = PetSeriesSpec(
        spacing=spacing,
        weight_kg=weight,
        dose_bq=dose,
        half_life_s=HALF_LIFE_S,
        injection=injection,
        series=injection + uptake,
        patient_id=patient,
    )
    if convention == "injection_before_midnight":
        spec.injection = day.replace(hour=23, minute=30)
        spec.series = spec.injection + uptake
        spec.injection_time_only = True
    if convention == "series_after_acquisition":
        spec.acquisition = spec.series
        spec.series = spec.series + timedelta(hours=2)  # re-reconstructed later
    lam = math.log(2) / HALF_LIFE_S
    scan = spec.acquisition or spec.series
    decayed = dose * math.exp(-lam * (scan - spec.injection).total_seconds())
    factor = weight * 1000 / decayed  # BQML / START
    if convention == "bqml_admin":
        spec.decay_correction, factor = "ADMIN", weight * 1000 / dose
    elif convention == "bqml_none":
        spec.decay_correction = "NONE"
        d = spec.frame_ms / 1000
        factor *= lam * d / (1 - math.exp(-lam * d))
    elif convention == "cnts_philips":
        spec.units, spec.philips_suv = "CNTS", factor
    elif convention == "weight_in_labels":
        spec.weight_kg = None
    write_pet_series(folder, suv / factor, spec)
    return f"{weight:g}" if convention == "weight_in_labels" else None


KEPT = frozenset({"README.md"})  # the folder's committed README stays


def studies_in(folder: Path) -> list[Path]:
    """What `folder` holds besides its README (nothing when it does not exist)."""
    return [p for p in folder.iterdir() if p.name not in KEPT] if folder.is_dir() else []


def generate_volumes(
    source_dir: str | Path,
    labels: str | Path,
    counts: dict[str, int],
    seed: int,
    voxel_mm: float,
) -> int:
    """Write `counts` synthetic studies per class folder and the labels table; how many."""
    source_dir, labels = Path(source_dir), Path(labels)
    for old in studies_in(source_dir):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    plans = plan_patients(counts, seed, (1, 1), VOLUME_PREFIX)
    rows = ["study,class,weight_kg"]
    for plan in plans:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(plan.index), 3]))
        suv = voxelize(build_anatomy(rng, plan.kind), voxel_mm)
        convention = CONVENTIONS[plan.index % len(CONVENTIONS)]
        study = f"study-{plan.patient.split('-')[1]}"
        weight = write_study(source_dir / study, suv, convention, plan.patient, voxel_mm, rng)
        rows.append(f"{study},{plan.folder},{weight or ''}")
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(rows) + "\n")
    return len(plans)
