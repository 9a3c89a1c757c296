"""The `ingest` stage on a tiny source folder: DICOM studies of several conventions, a
NIfTI study, bad and unlabelled studies; the class folders, the report, the images mode."""

from __future__ import annotations

import csv
import math
from datetime import datetime

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from petscan.demo.dicom_pet import PetSeriesSpec, write_pet_series
from petscan.ingest.pseudonym import pseudonym
from petscan.params.loading import StageParams
from petscan.params.schema import validate
from petscan.pipeline.ingest import SECTIONS, ingest
from petscan.utils.errors import BadInputError, ParamsError

KEY = "k" * 32
SUV = np.zeros((12, 10, 14), np.float32)
SUV[3:9, 2:8, 4:10] = 5.0  # half the [0, 10] window: inverted grey 32767 at the darkest
F18 = 6586.2


def factor(spec: PetSeriesSpec) -> float:
    """Independent: weight in g over the dose decayed from injection to series time."""
    uptake = (spec.series - spec.injection).total_seconds()
    return spec.weight_kg * 1000 / (spec.dose_bq * math.exp(-math.log(2) * uptake / F18))


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "volumes"
    good = PetSeriesSpec(patient_id="PAT-A")
    write_pet_series(src / "good", SUV / factor(good), good)
    late = PetSeriesSpec(
        patient_id="PAT-B",
        injection=datetime(2024, 3, 4, 23, 30),
        injection_time_only=True,
        series=datetime(2024, 3, 5, 0, 40),
    )
    write_pet_series(src / "midnight", SUV / factor(late), late)
    write_pet_series(src / "noweight", SUV, PetSeriesSpec(patient_id="PAT-C", weight_kg=None))
    supplied = PetSeriesSpec(patient_id="PAT-D", weight_kg=None)
    write_pet_series(src / "supplied", SUV / factor(PetSeriesSpec()), supplied)
    write_pet_series(src / "unlabelled", SUV, PetSeriesSpec(patient_id="PAT-E"))
    (src / "broken").mkdir()
    (src / "broken" / "notes.txt").write_text("no dicom here")
    (src / "nifti1").mkdir()  # autoPET: SUV.nii.gz beside the CT
    nib.save(nib.Nifti1Image(SUV, np.diag([4.0, 4.0, 4.0, 1.0])), src / "nifti1" / "SUV.nii.gz")
    nib.save(nib.Nifti1Image(SUV * 0, np.eye(4)), src / "nifti1" / "CTres.nii.gz")
    nib.save(nib.Nifti1Image(SUV, np.eye(4)), src / "case7_0000.nii.gz")  # nnU-Net CT
    rows = [
        "study,patient,class,weight_kg",
        "good,,breast cancer,",
        "midnight,,Prostate cancer,",
        "noweight,,No cancer,",
        "supplied,,No cancer,75",
        "broken,,No cancer,",
        "nifti1,PAT-N,breast cancer,",
    ]
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def params(root, **ingest_keys):
    raw = {
        "data": {"raw_dir": "data/ingested"},
        "ingest": {"source_dir": "volumes", "labels": "volumes/labels.csv", **ingest_keys},
    }
    return StageParams(validate(raw), SECTIONS)


def read_report(root):
    with (root / "reports/ingest/report.csv").open() as handle:
        return {row["study"]: row for row in csv.DictReader(handle)}


def test_ingest_writes_views_in_class_folders_and_a_report(source, monkeypatch):
    monkeypatch.setenv("PETSCAN_PSEUDONYM_KEY", KEY)
    ingest(params(source), root=source)
    report = read_report(source)
    ok = {s for s, row in report.items() if row["status"] == "ok"}
    assert ok == {"good", "midnight", "supplied", "nifti1"}
    assert "PatientWeight (0010,1030) missing: add a weight_kg" in report["noweight"]["reason"]
    assert "not in the labels table" in report["unlabelled"]["reason"]
    assert "no PET series" in report["broken"]["reason"]
    assert report["case7_0000.nii.gz"]["status"] == "skipped"
    assert report["supplied"]["supplied_by_labels"] == "weight_kg"
    good = PetSeriesSpec()
    assert float(report["good"]["scale_factor"]) == pytest.approx(factor(good), rel=1e-6)
    assert float(report["midnight"]["uptake_min"]) == 70.0
    assert report["good"]["scan_time_source"] == "SeriesTime"
    assert report["good"]["voxel_mm_in"] == "4x4x4"
    alias = pseudonym("PAT-A", KEY.encode())
    names = sorted(p.name for p in (source / "data/ingested/breast cancer").iterdir())
    assert names == sorted(
        [f"{alias}_v{k}.png" for k in range(1, 5)]
        + [f"{pseudonym('PAT-N', KEY.encode())}_v{k}.png" for k in range(1, 5)]
    )
    assert sorted(p.name for p in (source / "data/ingested").iterdir()) == [
        "No cancer",
        "breast cancer",
        "prostate cancer",
    ]
    for path in (source / "data/ingested").rglob("*.png"):
        with Image.open(path) as img:
            grey = np.asarray(img)
            assert img.mode.startswith("I;16") and not img.text and not img.info.get("exif")
        # SUV 5 in a [0, 10] window, inverted: 32767 (the 16-bit storage may move it by 1)
        assert abs(int(grey.min()) - 32767) <= 2 and grey.max() == 65535, path
    assert not list(source.glob("data/.ingested*"))  # no staging folder left


def test_images_mode_writes_an_empty_folder_and_says_so(source, monkeypatch):
    raw = {"data": {"raw_dir": "data/raw"}, "ingest": {"source_dir": "nowhere"}}
    assert ingest(StageParams(validate(raw), SECTIONS), root=source) == []
    assert list((source / "data/ingested").iterdir()) == []
    assert read_report(source)["-"]["status"] == "skipped"


def test_nothing_ingested_is_an_error_and_leaves_no_folder(source, monkeypatch):
    monkeypatch.setenv("PETSCAN_PSEUDONYM_KEY", KEY)
    (source / "volumes/labels.csv").write_text("study,class\nnoweight,No cancer\n")
    with pytest.raises(BadInputError, match="no study could be ingested"):
        ingest(params(source), root=source)
    assert not (source / "data/ingested").exists()
    assert read_report(source)["noweight"]["status"] == "excluded"


def test_the_pseudonym_map_only_on_request_and_never_in_data(source, monkeypatch, tmp_path):
    monkeypatch.setenv("PETSCAN_PSEUDONYM_KEY", KEY)
    with pytest.raises(ParamsError, match="must stay out of data/"):
        ingest(params(source, pseudonym_map="data/map.csv"), root=source)
    ingest(params(source, pseudonym_map=str(tmp_path / "private/map.csv")), root=source)
    text = (tmp_path / "private/map.csv").read_text()
    assert f"{pseudonym('PAT-A', KEY.encode())},PAT-A" in text
    assert (tmp_path / "private/map.csv").stat().st_mode & 0o077 == 0
    assert "PAT-" not in "".join(p.name for p in (source / "data").rglob("*"))


def test_no_key_is_one_line_naming_the_fix(source, monkeypatch):
    monkeypatch.delenv("PETSCAN_PSEUDONYM_KEY", raising=False)
    with pytest.raises(Exception, match=r"no pseudonym key: set \$PETSCAN_PSEUDONYM_KEY"):
        ingest(params(source, key_file=None), root=source)


def test_the_stage_script_answers_in_one_line_with_exit_1(source):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PETSCAN_ROOT": str(source)}
    env.pop("PETSCAN_PSEUDONYM_KEY", None)
    (source / "params.yaml").write_text(
        "data:\n  raw_dir: data/ingested\ningest:\n  source_dir: volumes\n"
        "  labels: volumes/labels.csv\n  key_file: null\n"
    )
    done = subprocess.run(
        [sys.executable, str(REPO / "stages/ingest.py")],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("ingest: error: no pseudonym key: set $PETSCAN_PSEUDONYM_KEY")
    assert len(done.stderr.splitlines()) == 1
