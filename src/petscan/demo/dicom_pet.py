"""Writing a PET volume as a DICOM PET series (one file per slice), as scanners do.

`write_pet_series(folder, volume, PetSeriesSpec(...))` stores an RAS+ volume (`[x, y, z]`:
Right, Anterior, Superior) as axial slices in DICOM's LPS frame, 16-bit with a RescaleSlope
of its own on every slice, and the PET Image module's attributes: Units, DecayCorrection,
CorrectedImage, the radiopharmaceutical sequence (dose, half-life, start time), PatientWeight,
and the Philips private SUV factors on request. The demo generator (`demo.volumes`) and the
tests of `ingest.dicom_series` use it; the values are the caller's (no SUV arithmetic here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


@dataclass
class PetSeriesSpec:
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)  # x, y, z mm
    units: str = "BQML"
    decay_correction: str = "START"
    weight_kg: float | None = 75.0
    dose_bq: float | None = 3.5e8
    half_life_s: float = 6586.2  # F-18
    injection: datetime | None = datetime(2024, 3, 5, 9, 0)
    injection_time_only: bool = False  # write RadiopharmaceuticalStartTime, no date
    series: datetime = datetime(2024, 3, 5, 10, 0)
    acquisition: datetime | None = None  # default: the series time
    frame_ms: float = 120000.0
    patient_id: str = "PAT-0001"
    study_uid: str | None = None
    series_uid: str | None = None
    modality: str = "PT"
    philips_suv: float | None = None
    philips_bqml: float | None = None
    transfer_syntax: str | None = None  # compress with pydicom (RLE, JPEG 2000 lossless)


def write_pet_series(folder: str | Path, volume: np.ndarray, spec: PetSeriesSpec) -> list[Path]:
    """One file per axial slice, `slice_0001.dcm`... (inferior to superior); their paths."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = volume.shape
    dx, dy, dz = spec.spacing
    study_uid = spec.study_uid or generate_uid()
    series_uid = spec.series_uid or generate_uid()
    acquisition = spec.acquisition or spec.series
    paths = []
    for k in range(nz):
        # LPS: columns run to the Left (-x of RAS), rows to Posterior (-y)
        pixels = volume[::-1, ::-1, k].T  # (rows = y, columns = x)
        top = float(pixels.max())
        slope = top / 65535.0 if top > 0 else 1.0
        stored = np.clip(np.round(pixels / slope), 0, 65535).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = PET_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = spec.modality, spec.patient_id, "Synthetic^Demo"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesDescription = f"synthetic {spec.modality} {spec.units}/{spec.decay_correction}"
        ds.InstanceNumber = nz - k  # deliberately not the spatial order
        ds.SeriesDate, ds.SeriesTime = (
            spec.series.strftime("%Y%m%d"),
            spec.series.strftime("%H%M%S"),
        )
        ds.AcquisitionDate = acquisition.strftime("%Y%m%d")
        ds.AcquisitionTime = acquisition.strftime("%H%M%S")
        ds.ActualFrameDuration = int(spec.frame_ms)
        ds.ImagePositionPatient = [0.0, 0.0, float(k * dz)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.Units, ds.DecayCorrection = spec.units, spec.decay_correction
        ds.CorrectedImage = ["DECY", "ATTN"] if spec.decay_correction != "NONE" else ["ATTN"]
        if spec.weight_kg is not None:
            ds.PatientWeight = f"{spec.weight_kg:g}"
        drug = Dataset()
        drug.RadionuclideHalfLife = f"{spec.half_life_s:g}"
        if spec.dose_bq is not None:
            drug.RadionuclideTotalDose = f"{spec.dose_bq:.6g}"
        if spec.injection is not None:
            drug.RadiopharmaceuticalStartTime = spec.injection.strftime("%H%M%S")
            if not spec.injection_time_only:
                drug.RadiopharmaceuticalStartDateTime = spec.injection.strftime("%Y%m%d%H%M%S")
        ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
        if spec.philips_suv is not None:
            ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
            ds.add_new((0x7053, 0x1000), "DS", f"{spec.philips_suv:.10g}")
        if spec.philips_bqml is not None:
            ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
            ds.add_new((0x7053, 0x1009), "DS", f"{spec.philips_bqml:.10g}")
        ds.PixelData = stored.tobytes()
        if spec.transfer_syntax is not None:
            ds.compress(spec.transfer_syntax)
        path = folder / f"slice_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
