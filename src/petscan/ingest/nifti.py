"""NIfTI volumes -> the canonical orientation (RAS+) every projection starts from.

`canonical(data, affine)` reorders and flips the array axes (no interpolation) into RAS+:
index i grows to the patient's Right, j to Anterior, k to Superior, whatever orientation
the file was stored in (a volume stored RAS and the same one stored LPS give the same
array). DICOM volumes (`dicom_series`) come with an RAS affine and take the same road.

`read_nifti(path)` loads a `.nii` / `.nii.gz` (nibabel) as float32 with its affine; the
values are what `ingest.nifti_units` says: `suv` (autoPET's SUV.nii.gz, DEEP-PSMA's
PET.nii.gz) or `bqml` (Bq/ml, turned into SUV with the dose, weight and times of the
labels table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petscan.utils.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OBLIQUE_TOLERANCE = 1e-3  # direction cosines, as for DICOM (`dicom_series.TOLERANCE`)


class NiftiError(UserError):
    """A NIfTI file that cannot be read as one 3-D volume."""


def canonical(
    data: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(`data` in RAS+ axis order, voxel size in mm along those axes)."""
    from nibabel import orientations

    current = orientations.io_orientation(affine)
    wanted = orientations.axcodes2ornt(("R", "A", "S"))
    transform = orientations.ornt_transform(current, wanted)
    out = orientations.apply_orientation(data, transform)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # per stored axis
    order = [int(a) for a in current[:, 0]]  # stored axis -> RAS axis
    spacing = [0.0, 0.0, 0.0]
    for stored, ras in enumerate(order):
        spacing[ras] = float(zooms[stored])
    return np.ascontiguousarray(out, dtype=np.float32), (spacing[0], spacing[1], spacing[2])


def read_nifti(path: str | Path, study: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 data, affine) of a 3-D NIfTI file (a 4-D file with one volume is accepted)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many kinds for a damaged file
        raise NiftiError(
            f"study {study}: {Path(path).name} is not a readable NIfTI file ({err})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(
            f"study {study}: {Path(path).name} has shape {data.shape}, not one 3-D volume"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    directions = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.abs(directions).max(axis=0).min() < 1 - OBLIQUE_TOLERANCE:
        raise NiftiError(
            f"study {study}: {Path(path).name} is stored oblique (its affine is not "
            "axis-aligned): resample it to an axial grid first"
        )
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data, affine


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
