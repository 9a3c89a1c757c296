"""SUV body weight: the factor that turns a PET slice's rescaled values into SUV.

`suv_factors(header, study)` returns one factor per slice, such that
`SUV = (stored * RescaleSlope + RescaleIntercept) * factor`, for every case of Units x
DecayCorrection of the PET Image module (DICOM PS3.3 C.8.9.4, the QIBA vendor-neutral SUV
pseudo-code):

- Units GML: already SUV body weight, factor 1 (a real value, never a fallback).
- Units BQML, DecayCorrection START: the image is decay corrected to the series start, so
  the dose is decayed from the injection to the scan time:
  `factor = weight_g / (dose_Bq * exp(-ln2 * uptake_s / half_life_s))`.
- BQML, ADMIN: corrected to the injection already: `factor = weight_g / dose_Bq`.
- BQML, NONE: not decay corrected; each slice (frame) is decayed to the average-count time
  of its frame, from its AcquisitionTime and ActualFrameDuration `d`:
  `factor = weight_g / (dose_Bq * exp(-lam * (t_frame - t_inj))) * lam d / (1 - exp(-lam d))`.
- Units CNTS (Philips): the private SUV scale factor (7053,1000) when present; else the
  activity-concentration factor (7053,1009) turns counts into Bq/ml and the BQML rule applies.

The scan time is SeriesDate/SeriesTime unless that is after the earliest
AcquisitionDate/Time (some scanners rewrite the series time after a reconstruction), then
that acquisition time. The injection is RadiopharmaceuticalStartDateTime, or
RadiopharmaceuticalStartTime on the series date, a day earlier when that puts it after the
scan (an injection before midnight). Nothing is guessed: a missing weight, dose, half-life
or time is a `SuvError` naming the study and the tag (and the labels-table column that can
supply it); a dose that looks like MBq, a weight that looks like grams, and a negative or
absurd uptake time are refused the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from petscan.utils.errors import UserError

LN2 = math.log(2.0)
MIN_DOSE_BQ = 1e6  # 1 MBq: a "dose" below it is a dose written in MBq (or kBq) by mistake
MAX_WEIGHT_KG = 350.0  # above it, a weight written in grams by mistake
MIN_WEIGHT_KG = 1.0


class SuvError(UserError):
    """A study whose SUV factor cannot be computed from its headers (or the labels table)."""


@dataclass(frozen=True)
class PetHeader:
    """The header values the SUV needs, read once per series (`dicom_series`) or given by
    the labels table (NIfTI in Bq/ml). Times are naive local datetimes, as DICOM has them."""

    units: str
    decay_correction: str
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    injection: datetime | None = None  # RadiopharmaceuticalStartDateTime
    injection_time: time | None = None  # RadiopharmaceuticalStartTime (no date)
    series: datetime | None = None  # SeriesDate + SeriesTime
    acquisitions: tuple[datetime, ...] = ()  # per slice: AcquisitionDate + AcquisitionTime
    frame_durations_ms: tuple[float, ...] = ()  # per slice: ActualFrameDuration
    philips_suv: float | None = None  # (7053,1000)
    philips_bqml: float | None = None  # (7053,1009)
    sources: dict[str, str] = field(default_factory=dict)  # value -> "labels" when supplied


@dataclass(frozen=True)
class SuvResult:
    factors: np.ndarray  # float64, one per slice
    scan_time_source: str  # SeriesTime | AcquisitionTime | per-frame AcquisitionTime | none
    uptake_s: float | None  # injection to scan time
    rule: str  # which case of Units x DecayCorrection gave the factor


def parse_date_time(day: str | None, clock: str | None) -> datetime | None:
    """DICOM DA (YYYYMMDD) + TM (HHMMSS.ffffff, fields optional) -> datetime, or None."""
    if not day or not clock:
        return None
    return datetime.combine(parse_date(day), parse_time(clock))


def parse_date(day: str) -> date:
    return datetime.strptime(str(day).strip()[:8], "%Y%m%d").date()


def parse_time(clock: str) -> time:
    text = str(clock).strip().replace(":", "")
    whole, _, frac = text.partition(".")
    whole = whole.ljust(6, "0")
    micro = int((frac + "000000")[:6]) if frac else 0
    return time(int(whole[:2]), int(whole[2:4]), int(whole[4:6]), micro)


def parse_datetime(text: str | None) -> datetime | None:
    """DICOM DT (YYYYMMDDHHMMSS.ffffff, a UTC offset ignored) -> datetime, or None."""
    if not text:
        return None
    text = str(text).strip().split("+")[0].split("-")[0]
    return parse_date_time(text[:8], text[8:] or "000000")


def scan_time(header: PetHeader, study: str) -> tuple[datetime, str]:
    """The reference time of the decay correction and where it came from."""
    first = min(header.acquisitions) if header.acquisitions else None
    if header.series is None and first is None:
        raise SuvError(
            f"study {study}: no SeriesDate/SeriesTime (0008,0021/0031) nor "
            "AcquisitionDate/Time (0008,0022/0032): the scan time is unknown"
        )
    if header.series is None:
        return first, "AcquisitionTime"
    if first is not None and header.series > first:
        return first, "AcquisitionTime (SeriesTime is after the acquisition)"
    return header.series, "SeriesTime"


def injection_time(header: PetHeader, scan: datetime, study: str) -> datetime:
    """RadiopharmaceuticalStartDateTime, or StartTime on the scan's date (a day earlier
    when that is after the scan: the injection was before midnight)."""
    if header.injection is not None:
        return header.injection
    if header.injection_time is None:
        raise SuvError(
            f"study {study}: RadiopharmaceuticalStartDateTime (0018,1078) and "
            "RadiopharmaceuticalStartTime (0018,1072) missing: add an injection_time column "
            "(YYYYMMDDHHMMSS) to the labels table (ingest.labels)"
        )
    injected = datetime.combine(scan.date(), header.injection_time)
    if injected > scan:
        injected -= timedelta(days=1)
    return injected


def check_weight_dose(header: PetHeader, study: str) -> tuple[float, float, float]:
    """(weight in g, dose in Bq, half-life in s), each present and plausible, or SuvError."""
    if header.weight_kg is None or header.weight_kg == 0:
        raise SuvError(
            f"study {study}: PatientWeight (0010,1030) missing: add a weight_kg "
            "column to the labels table (ingest.labels)"
        )
    if header.weight_kg > MAX_WEIGHT_KG:
        raise SuvError(
            f"study {study}: PatientWeight (0010,1030) = {header.weight_kg:g} kg looks like "
            "grams (the tag is in kg): put the weight in kg in the labels table's weight_kg"
        )
    if header.weight_kg < MIN_WEIGHT_KG:
        raise SuvError(
            f"study {study}: PatientWeight (0010,1030) = {header.weight_kg:g} kg "
            "is not a patient's weight: fix weight_kg in the labels table"
        )
    if header.dose_bq is None or header.dose_bq == 0:
        raise SuvError(
            f"study {study}: RadionuclideTotalDose (0018,1074) missing: add a "
            "dose_bq column to the labels table (ingest.labels)"
        )
    if header.dose_bq < MIN_DOSE_BQ:
        raise SuvError(
            f"study {study}: RadionuclideTotalDose (0018,1074) = {header.dose_bq:g} looks like "
            "MBq (the tag is in Bq): put the dose in Bq in the labels table's dose_bq"
        )
    if not header.half_life_s or header.half_life_s <= 0:
        raise SuvError(
            f"study {study}: RadionuclideHalfLife (0018,1075) missing: add a "
            "half_life_s column to the labels table (ingest.labels)"
        )
    return header.weight_kg * 1000.0, header.dose_bq, header.half_life_s


def check_uptake(seconds: float, study: str, max_uptake_h: float) -> float:
    if seconds < 0:
        raise SuvError(
            f"study {study}: the injection is {-seconds / 60:.1f} min after the scan "
            "time: check RadiopharmaceuticalStartDateTime and SeriesTime"
        )
    if seconds > max_uptake_h * 3600:
        raise SuvError(
            f"study {study}: uptake time {seconds / 3600:.1f} h is above ingest.max_uptake_h = "
            f"{max_uptake_h:g}: check the injection and scan dates and times"
        )
    return seconds


def suv_factors(
    header: PetHeader, n_slices: int, study: str, max_uptake_h: float = 24.0
) -> SuvResult:
    """One factor per slice turning rescaled values into SUV body weight (module docstring)."""
    units = (header.units or "").upper()
    decay = (header.decay_correction or "").upper()
    if units == "GML":
        return SuvResult(np.ones(n_slices), "none", None, "GML (already SUV)")
    scale, rule = 1.0, f"{units}/{decay}"
    if units == "CNTS":
        if header.philips_suv is not None:
            # Philips' own SUV factor: it already holds weight, dose and decay
            return SuvResult(
                np.full(n_slices, header.philips_suv),
                "none",
                None,
                "CNTS x Philips SUV factor (7053,1000)",
            )
        if header.philips_bqml is None:
            raise SuvError(
                f"study {study}: Units CNTS without the Philips factors (7053,1000) "
                "or (7053,1009): counts cannot be turned into SUV"
            )
        scale, rule = header.philips_bqml, f"CNTS x (7053,1009) -> BQML/{decay}"
    elif units != "BQML":
        raise SuvError(
            f"study {study}: Units (0054,1001) = {units or 'missing'}: only BQML, "
            "CNTS (Philips) and GML can be turned into SUV"
        )
    weight_g, dose, half_life = check_weight_dose(header, study)
    lam = LN2 / half_life
    if decay == "ADMIN":
        # no decay to apply; the uptake time is recorded when the headers give it
        uptake, source = None, "none (ADMIN: no decay)"
        if (header.series or header.acquisitions) and (header.injection or header.injection_time):
            scan, source = scan_time(header, study)
            uptake = (scan - injection_time(header, scan, study)).total_seconds()
        return SuvResult(np.full(n_slices, scale * weight_g / dose), source, uptake, rule)
    if decay == "START":
        scan, source = scan_time(header, study)
        since = (scan - injection_time(header, scan, study)).total_seconds()
        uptake = check_uptake(since, study, max_uptake_h)
        factor = scale * weight_g / (dose * math.exp(-lam * uptake))
        return SuvResult(np.full(n_slices, factor), source, uptake, rule)
    if decay == "NONE":
        return _per_frame(header, n_slices, study, max_uptake_h, scale, weight_g, dose, lam, rule)
    raise SuvError(
        f"study {study}: DecayCorrection (0054,1102) = {decay or 'missing'}: "
        "expected START, ADMIN or NONE"
    )


def _per_frame(header, n_slices, study, max_uptake_h, scale, weight_g, dose, lam, rule):
    """DecayCorrection NONE: each slice decayed to its frame's average-count time."""
    if len(header.acquisitions) != n_slices or len(header.frame_durations_ms) != n_slices:
        raise SuvError(
            f"study {study}: DecayCorrection NONE needs AcquisitionTime (0008,0032) "
            "and ActualFrameDuration (0018,1242) on every slice"
        )
    first = min(header.acquisitions)
    injected = injection_time(header, first, study)
    factors = np.empty(n_slices)
    for i, (start, ms) in enumerate(
        zip(header.acquisitions, header.frame_durations_ms, strict=True)
    ):
        since = check_uptake((start - injected).total_seconds(), study, max_uptake_h)
        d = ms / 1000.0
        average = lam * d / (1.0 - math.exp(-lam * d)) if d > 0 else 1.0
        factors[i] = scale * weight_g / (dose * math.exp(-lam * since)) * average
    uptake = (first - injected).total_seconds()
    return SuvResult(factors, "per-frame AcquisitionTime", uptake, rule)
