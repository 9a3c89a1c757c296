"""SUV body-weight factors, hand computed: half-life 6000 s, dose 4e8 Bq, weight 80 kg.

Uptake of exactly one half-life halves the dose: factor = 80000 g / 2e8 Bq = 4e-4.
"""

from __future__ import annotations

import math
from datetime import datetime, time

import pytest

from petscan.ingest.suv import PetHeader, SuvError, parse_datetime, parse_time, suv_factors

DAY = datetime(2024, 1, 2)
INJ = datetime(2024, 1, 2, 10, 0, 0)
SCAN = datetime(2024, 1, 2, 11, 40, 0)  # 6000 s later
BASE = dict(weight_kg=80.0, dose_bq=4e8, half_life_s=6000.0, injection=INJ, series=SCAN)


def header(**kw) -> PetHeader:
    return PetHeader(**{"units": "BQML", "decay_correction": "START", **BASE, **kw})


def test_bqml_start_decays_the_dose_to_the_series_time():
    result = suv_factors(header(), 3, "s1")
    assert result.factors.tolist() == pytest.approx([4e-4] * 3, rel=1e-12)
    assert result.uptake_s == 6000 and result.scan_time_source == "SeriesTime"


def test_bqml_admin_applies_no_decay():
    result = suv_factors(header(decay_correction="ADMIN"), 2, "s1")
    assert result.factors.tolist() == pytest.approx([2e-4, 2e-4], rel=1e-12)


def test_bqml_none_decays_each_frame_to_its_average_count_time():
    # frame 1 starts one half-life after injection and lasts one half-life:
    # lam d / (1 - exp(-lam d)) = ln2 / 0.5 = 2 ln2; frame 2 starts at injection
    h = header(decay_correction="NONE", acquisitions=(SCAN, INJ), frame_durations_ms=(6e6, 6e6))
    result = suv_factors(h, 2, "s1")
    assert result.factors.tolist() == pytest.approx(
        [4e-4 * 2 * math.log(2), 2e-4 * 2 * math.log(2)], rel=1e-12
    )
    assert result.scan_time_source == "per-frame AcquisitionTime"


def test_bqml_none_short_frame_is_almost_the_start_time():
    h = header(decay_correction="NONE", acquisitions=(SCAN,), frame_durations_ms=(1.0,))
    assert suv_factors(h, 1, "s1").factors[0] == pytest.approx(4e-4, rel=1e-6)


def test_gml_is_already_suv():
    assert suv_factors(PetHeader("GML", "START"), 2, "s1").factors.tolist() == [1.0, 1.0]


def test_philips_cnts_suv_factor_is_used_as_is():
    h = header(units="CNTS", philips_suv=0.0123, weight_kg=None, dose_bq=None)
    assert suv_factors(h, 2, "s1").factors.tolist() == [0.0123, 0.0123]


def test_philips_cnts_activity_factor_then_the_bqml_rule():
    assert suv_factors(header(units="CNTS", philips_bqml=2.5), 1, "s1").factors[0] == (
        pytest.approx(1e-3, rel=1e-12)
    )
    assert suv_factors(
        header(units="CNTS", philips_bqml=2.5, decay_correction="ADMIN"), 1, "s1"
    ).factors[0] == pytest.approx(5e-4, rel=1e-12)


def test_cnts_without_philips_factors_is_refused():
    with pytest.raises(SuvError, match="study s1: Units CNTS without"):
        suv_factors(header(units="CNTS"), 1, "s1")


def test_injection_before_midnight_with_start_time_only():
    h = header(injection=None, injection_time=time(23, 20), series=datetime(2024, 1, 3, 1, 0))
    result = suv_factors(h, 1, "s1")
    assert result.uptake_s == 6000 and result.factors[0] == pytest.approx(4e-4, rel=1e-12)


def test_series_time_after_the_acquisition_uses_the_acquisition():
    h = header(
        series=datetime(2024, 1, 2, 12, 30), acquisitions=(datetime(2024, 1, 2, 11, 50), SCAN)
    )
    result = suv_factors(h, 2, "s1")
    assert result.scan_time_source.startswith("AcquisitionTime")
    assert result.factors[0] == pytest.approx(4e-4, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(dose_bq=400.0), r"s7: RadionuclideTotalDose \(0018,1074\) = 400 looks like MBq"),
        (dict(weight_kg=80000.0), r"s7: PatientWeight \(0010,1030\) = 80000 kg looks like grams"),
        (dict(weight_kg=None), r"study s7: PatientWeight \(0010,1030\) missing: add a weight_kg"),
        (dict(dose_bq=None), r"s7: RadionuclideTotalDose \(0018,1074\) missing: add a dose_bq"),
        (dict(half_life_s=None), r"RadionuclideHalfLife \(0018,1075\) missing"),
        (dict(injection=datetime(2024, 1, 2, 12)), r"study s7: the injection is 20.0 min after"),
        (dict(injection=datetime(2023, 12, 31, 10)), r"study s7: uptake time 49.7 h is above"),
        (dict(injection=None), r"study s7: RadiopharmaceuticalStartDateTime \(0018,1078\)"),
        (dict(units="PROPCNTS"), r"Units \(0054,1001\) = PROPCNTS"),
        (dict(decay_correction="XYZ"), r"DecayCorrection \(0054,1102\) = XYZ"),
        (dict(series=None), r"the scan time is unknown"),
    ],
)
def test_refusals_name_the_study_and_the_tag(change, match):
    with pytest.raises(SuvError, match=match) as info:
        suv_factors(header(**change), 1, "s7")
    assert "\n" not in str(info.value)


def test_dicom_time_parsing():
    assert parse_time("1140") == time(11, 40)
    assert parse_time("114005.5") == time(11, 40, 5, 500000)
    assert parse_datetime("20240102114005.25+0100") == datetime(2024, 1, 2, 11, 40, 5, 250000)
    assert DAY.date() == parse_datetime("20240102").date()
