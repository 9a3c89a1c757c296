"""DICOM files -> PET series: grouping, slice order, geometry checks, rescale, SUV header.

`read_pet_series(folder, study)` reads every file under `folder` (non-DICOM files are
noted and skipped), groups them by SeriesInstanceUID, keeps the PET (Modality PT) series
and names the others (CT, SEG, RTSTRUCT, ...) in its notes. A PET series becomes one
volume in Bq/ml (or counts, or SUV: whatever Units says) with:

- slices sorted by ImagePositionPatient projected on the slice normal (the cross product of
  ImageOrientationPatient's row and column directions), never by InstanceNumber;
- one orientation, axial and axis-aligned; positions along the normal (a gantry tilt moves
  them sideways: refused); equal spacing, no gap, no two slices at one position;
- RescaleSlope / RescaleIntercept applied per slice (it varies per slice on some scanners)
  before anything else;
- enhanced (multi-frame) PET read from its functional groups;
- compressed transfer syntaxes decoded by pydicom's pixel-data plugins: RLE (pydicom
  itself), JPEG lossless / JPEG-LS (pylibjpeg-libjpeg), JPEG 2000 (pylibjpeg-openjpeg).

Every refusal is a `SeriesError`: one line naming the study and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petscan.ingest.suv import PetHeader, parse_date_time, parse_datetime, parse_time
from petscan.utils.errors import UserError

TOLERANCE = 1e-3  # direction cosines; relative spacing (0.1 %)


class SeriesError(UserError):
    """A study whose DICOM files do not make one usable PET volume."""


@dataclass
class PetVolume:
    """A PET volume in the patient's RAS+ frame: `data[i, j, k]` at `affine @ (i, j, k, 1)`."""

    data: np.ndarray  # float32, rescaled (Units of `header`), (columns, rows, slices)
    affine: np.ndarray  # 4 x 4, RAS+ mm (DICOM's LPS with x and y negated)
    header: PetHeader
    patient_id: str
    notes: list[str]


def read_pet_series(folder: str | Path, study: str) -> PetVolume:
    """The one PET series under `folder` (module docstring); notes name what was left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    notes: list[str] = []
    series: dict[str, list[tuple[Path, Any]]] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            notes.append(f"{path.name}: not DICOM, skipped")
            continue
        if "SeriesInstanceUID" not in ds:
            notes.append(f"{path.name}: no SeriesInstanceUID, skipped")
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    pet = {}
    for uid, files in series.items():
        first = files[0][1]
        modality = str(first.get("Modality", "?"))
        if modality == "PT":
            pet[uid] = files
        else:
            name = _name(first, uid)
            notes.append(
                f"series '{name}' (Modality {modality}, {len(files)} files): not PET, left out"
            )
    if not pet:
        raise SeriesError(f"study {study}: no PET series (Modality PT) among {len(series)} series")
    if len(pet) > 1:  # e.g. attenuation-corrected and not: keep the corrected one
        corrected = {uid: f for uid, f in pet.items() if "ATTN" in _corrections(f[0][1])}
        for uid in sorted(set(pet) - set(corrected)):
            notes.append(
                f"PET series '{_name(pet[uid][0][1], uid)}' without attenuation "
                "correction (CorrectedImage), left out"
            )
        if len(corrected) != 1:
            names = ", ".join(sorted(_name(f[0][1], uid) for uid, f in pet.items()))
            raise SeriesError(
                f"study {study}: {len(pet)} PET series ({names}) and not one "
                "attenuation-corrected among them: keep one per study folder"
            )
        pet = corrected
    files = next(iter(pet.values()))
    full = [pydicom.dcmread(path) for path, _ in files]
    if len(full) == 1 and int(full[0].get("NumberOfFrames", 1) or 1) > 1:
        slices = _frames(full[0], study)
    else:
        slices = [_slice(ds, study) for ds in full]
    data, affine, order = _stack(slices, study)
    ordered = [slices[i] for i in order]
    header = _header(full[0], ordered)
    return PetVolume(data, affine, header, str(full[0].get("PatientID", "")), notes)


def _name(ds: Any, uid: str) -> str:
    return str(ds.get("SeriesDescription", "")) or uid


def _corrections(ds: Any) -> set[str]:
    value = ds.get("CorrectedImage") or []
    return {str(v).upper() for v in ([value] if isinstance(value, str) else value)}


@dataclass
class _Slice:
    position: np.ndarray
    orientation: np.ndarray  # 6 direction cosines
    spacing: tuple[float, float]  # (between rows, between columns)
    pixels: np.ndarray  # rescaled, (rows, columns)
    acquisition: Any  # datetime | None
    duration_ms: float | None


def _rescaled(pixels: np.ndarray, slope: Any, intercept: Any) -> np.ndarray:
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _geometry(ds: Any, study: str, where: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise SeriesError(
            f"study {study}: {where} lacks ImagePositionPatient, ImageOrientationPatient or "
            "PixelSpacing: the slices cannot be placed"
        ) from None
    return position, orientation, spacing


def _slice(ds: Any, study: str) -> _Slice:
    position, orientation, spacing = _geometry(
        ds, study, f"instance {ds.get('InstanceNumber', '?')}"
    )
    pixels = _rescaled(ds.pixel_array, ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    when = parse_date_time(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"))
    duration = ds.get("ActualFrameDuration")
    return _Slice(
        position, orientation, spacing, pixels, when, None if duration is None else float(duration)
    )


def _frames(ds: Any, study: str) -> list[_Slice]:
    """The frames of an enhanced (multi-frame) PET image, each placed by its functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if frames is None:
        raise SeriesError(
            f"study {study}: a multi-frame PET file without PerFrameFunctionalGroupsSequence"
        )
    pixels = ds.pixel_array
    out = []
    for i, group in enumerate(frames):

        def item(name: str, group=group, i=i) -> Any:
            for source in (group, shared):
                if source is not None and name in source:
                    return source[name].value[0]
            raise SeriesError(f"study {study}: frame {i + 1} has no {name}")

        merged = type("Frame", (), {})()
        merged.ImagePositionPatient = item("PlanePositionSequence").ImagePositionPatient
        merged.ImageOrientationPatient = item("PlaneOrientationSequence").ImageOrientationPatient
        merged.PixelSpacing = item("PixelMeasuresSequence").PixelSpacing
        position, orientation, spacing = _geometry(merged, study, f"frame {i + 1}")
        try:
            transform = item("PixelValueTransformationSequence")
            slope, intercept = transform.get("RescaleSlope"), transform.get("RescaleIntercept")
        except SeriesError:
            slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        when, duration = None, None
        if "FrameContentSequence" in group:
            content = group.FrameContentSequence[0]
            when = parse_datetime(content.get("FrameAcquisitionDateTime"))
            duration = content.get("FrameAcquisitionDuration")
        out.append(
            _Slice(
                position,
                orientation,
                spacing,
                _rescaled(pixels[i], slope, intercept),
                when,
                None if duration is None else float(duration),
            )
        )
    return out


def _stack(slices: list[_Slice], study: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Check the geometry, sort along the normal; (data, RAS affine, order of `slices`)."""
    orientation = slices[0].orientation
    for s in slices:
        if not np.allclose(s.orientation, orientation, atol=TOLERANCE):
            raise SeriesError(
                f"study {study}: the slices have more than one ImageOrientationPatient"
            )
        if s.spacing != slices[0].spacing or s.pixels.shape != slices[0].pixels.shape:
            raise SeriesError(f"study {study}: the slices differ in PixelSpacing or matrix size")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    for axis in (row, col, normal):
        if np.max(np.abs(axis)) < 1 - TOLERANCE:
            raise SeriesError(
                f"study {study}: oblique series (ImageOrientationPatient "
                f"{orientation.round(3).tolist()}): only axis-aligned axial PET is read"
            )
    if abs(normal[2]) < 1 - TOLERANCE:
        raise SeriesError(
            f"study {study}: not an axial series (slice normal {normal.round(3).tolist()})"
        )
    along = np.asarray([s.position @ normal for s in slices])
    order = [int(i) for i in np.argsort(along, kind="stable")]
    if len(slices) > 1:
        steps = np.diff(along[order])
        if np.min(steps) <= TOLERANCE:
            raise SeriesError(
                f"study {study}: two slices at one position ({along[order][np.argmin(steps)]:g} mm)"
            )
        sideways = [s.position - (s.position @ normal) * normal for s in (slices[i] for i in order)]
        shift = np.max(np.linalg.norm(np.asarray(sideways) - sideways[0], axis=1))
        if shift > 0.01 * float(np.min(steps)) + TOLERANCE:
            raise SeriesError(
                f"study {study}: gantry tilt (slice positions drift {shift:.2f} mm "
                "off the slice normal): resample it to axial slices first"
            )
        step = float(np.median(steps))
        if np.max(np.abs(steps - step)) > max(TOLERANCE, 0.01 * step):
            k = int(np.argmax(np.abs(steps - step)))
            what = "a missing slice" if steps[k] > 1.5 * step else "unequal spacing"
            raise SeriesError(
                f"study {study}: {what} between {along[order][k]:g} and "
                f"{along[order][k + 1]:g} mm (spacing {step:g} mm elsewhere)"
            )
    else:
        step = 1.0
    data = np.stack([slices[i].pixels for i in order], axis=-1).transpose(1, 0, 2)  # (col, row, k)
    dy, dx = slices[0].spacing  # DICOM: between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, normal * step
    lps[:3, 3] = slices[order[0]].position
    return np.ascontiguousarray(data), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, order


def _float(ds: Any, name: str) -> float | None:
    value = ds.get(name)
    return None if value in (None, "") else float(value)


def _header(ds: Any, slices: list[_Slice]) -> PetHeader:
    """The SUV inputs of a series (the first file's module values, each slice's times)."""
    dose = half_life = injection = injection_clock = None
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if info:
        drug = info[0]
        dose, half_life = (
            _float(drug, "RadionuclideTotalDose"),
            _float(drug, "RadionuclideHalfLife"),
        )
        injection = parse_datetime(drug.get("RadiopharmaceuticalStartDateTime"))
        clock = drug.get("RadiopharmaceuticalStartTime")
        injection_clock = parse_time(clock) if clock else None
    private = {}
    for tag, key in (((0x7053, 0x1000), "suv"), ((0x7053, 0x1009), "bqml")):
        if tag in ds:
            value = ds[tag].value
            private[key] = float(value if not isinstance(value, bytes) else value.decode().strip())
    times = tuple(s.acquisition for s in slices if s.acquisition is not None)
    durations = tuple(s.duration_ms for s in slices if s.duration_ms is not None)
    return PetHeader(
        units=str(ds.get("Units", "")),
        decay_correction=str(ds.get("DecayCorrection", "")),
        weight_kg=_float(ds, "PatientWeight"),
        dose_bq=dose,
        half_life_s=half_life,
        injection=injection,
        injection_time=injection_clock,
        series=parse_date_time(ds.get("SeriesDate"), ds.get("SeriesTime")),
        acquisitions=times if len(times) == len(slices) else (),
        frame_durations_ms=durations if len(durations) == len(slices) else (),
        philips_suv=private.get("suv"),
        philips_bqml=private.get("bqml"),
    )
