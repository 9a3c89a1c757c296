"""One study, from its files to an SUV volume in RAS+ (`load_study`), and finding studies.

A study is a direct child of `ingest.source_dir`: a `.nii` / `.nii.gz` file whose name
matches `ingest.nifti_names`, or a folder holding either NIfTI files (the PET one chosen by
`ingest.nifti_names`: autoPET's `SUV.nii.gz` beside CT and SEG) or the DICOM files of one
PET series (other series, such as
the CT, are named in the report and left out). Values the labels table supplies override
the headers'; nothing missing is ever filled in by a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petscan.ingest.dicom_series import read_pet_series
from petscan.ingest.nifti import NiftiError, canonical, is_nifti, nifti_stem, read_nifti
from petscan.ingest.suv import PetHeader, parse_datetime, suv_factors
from petscan.utils.errors import UserError

if TYPE_CHECKING:
    from petscan.ingest.labels import Label, LabelsTable
    from petscan.params.inputs import IngestParams


@dataclass
class Study:
    name: str
    path: Path


@dataclass
class StudyVolume:
    suv: np.ndarray  # float32 RAS+
    spacing: tuple[float, float, float]
    patient_id: str
    label: Label
    record: dict[str, Any] = field(default_factory=dict)  # report columns


def find_studies(source_dir: str | Path, nifti_names: list[str]) -> tuple[list[Study], list[str]]:
    """The studies under `source_dir`, by name (hidden entries and other files skipped), and
    the NIfTI files left out because no pattern of `nifti_names` matches their name (the
    CT channel `<case>_0000` of an nnU-Net folder, ...)."""
    studies, skipped = [], []
    for path in sorted(Path(source_dir).iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            studies.append(Study(path.name, path))
        elif is_nifti(path):
            if any(re.fullmatch(p, nifti_stem(path)) for p in nifti_names):
                studies.append(Study(nifti_stem(path), path))
            else:
                skipped.append(path.name)
    return studies, skipped


def load_study(study: Study, labels: LabelsTable, params: IngestParams) -> StudyVolume:
    """The study's SUV volume (RAS+), its patient id, label and report entries, or a
    `UserError` naming the study and why it is left out."""
    nifti = _nifti_file(study, params.nifti_names)
    if nifti is not None:
        return _load_nifti(study, nifti, labels, params)
    pet = read_pet_series(study.path, study.name)
    label = _label(labels, study.name, pet.patient_id)
    header = _supplied(pet.header, label)
    suv = suv_factors(header, pet.data.shape[2], study.name, params.max_uptake_h)
    data = pet.data * suv.factors.astype(np.float32)[None, None, :]
    volume, spacing = canonical(data, pet.affine)
    record = _record("dicom", header, suv, spacing, label)
    record["notes"] = "; ".join(pet.notes)
    return StudyVolume(
        volume, spacing, label.patient or pet.patient_id or study.name, label, record
    )


def _nifti_file(study: Study, nifti_names: list[str]) -> Path | None:
    """The study's NIfTI file: itself, or in its folder the file whose name (without
    .nii/.nii.gz) matches the first pattern of `ingest.nifti_names` that matches one; None
    for a folder without NIfTI files (DICOM)."""
    if study.path.is_file():
        return study.path
    found = sorted(p for p in study.path.iterdir() if p.is_file() and is_nifti(p))
    if not found:
        return None
    for pattern in nifti_names:
        chosen = [p for p in found if re.fullmatch(pattern, nifti_stem(p))]
        if len(chosen) == 1:
            return chosen[0]
        if len(chosen) > 1:
            break
    raise NiftiError(
        f"study {study.name}: no single NIfTI file among {', '.join(p.name for p in found)} "
        f"matches ingest.nifti_names {nifti_names}: name the PET volume's file there"
    )


def _load_nifti(study: Study, path: Path, labels: LabelsTable, params: IngestParams) -> StudyVolume:
    label = _label(labels, study.name, None)
    data, affine = read_nifti(path, study.name)
    volume, spacing = canonical(data, affine)
    if params.nifti_units == "suv":
        header = PetHeader("GML", "NONE")
    else:  # Bq/ml: decay corrected to the scan start, as autoPET's and most exports are
        header = _supplied(PetHeader("BQML", "START"), label)
    suv = suv_factors(header, 1, study.name, params.max_uptake_h)
    volume = volume * np.float32(suv.factors[0])
    record = _record("nifti", header, suv, spacing, label)
    return StudyVolume(volume, spacing, label.patient or study.name, label, record)


def _label(labels: LabelsTable, study: str, patient_id: str | None) -> Label:
    label = labels.find(study, patient_id)
    if label is None:
        raise LabelMissing(f"study {study}: not in the labels table (ingest.labels): no class")
    return label


class LabelMissing(UserError):
    """A study the labels table does not name: it has no class, so it is left out."""


def _supplied(header: PetHeader, label: Label) -> PetHeader:
    """`header` with the labels table's values in place of the headers' (recorded)."""
    given = label.supplied
    changes: dict[str, Any] = {}
    for column in ("weight_kg", "dose_bq", "half_life_s"):
        if column in given:
            changes[column] = float(given[column])
    if "injection_time" in given:
        changes["injection"] = parse_datetime(given["injection_time"])
    if "scan_time" in given:
        changes["series"] = parse_datetime(given["scan_time"])
        changes["acquisitions"] = ()
    if not changes:
        return header
    return replace(header, **changes, sources={c: "labels" for c in given})


def _record(source: str, header: PetHeader, suv, spacing, label: Label) -> dict[str, Any]:
    factors = suv.factors
    return {
        "source": source,
        "class_folder": label.folder,
        "units": header.units,
        "decay_correction": header.decay_correction,
        "rule": suv.rule,
        "scale_factor": float(np.mean(factors)),
        "scale_factor_min": float(np.min(factors)),
        "scale_factor_max": float(np.max(factors)),
        "scan_time_source": suv.scan_time_source,
        "uptake_min": None if suv.uptake_s is None else round(suv.uptake_s / 60.0, 2),
        "voxel_mm_in": "x".join(f"{s:g}" for s in spacing),
        "supplied_by_labels": ",".join(sorted(header.sources)),
    }
