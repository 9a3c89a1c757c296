"""Every convention the volume generator writes reads back to the same SUV; NIfTI in Bq/ml
with the labels table's values; the labels table and the pseudonym key refuse bad input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from petscan.demo.volumes import CONVENTIONS, write_study
from petscan.ingest.labels import read_labels
from petscan.ingest.pseudonym import PseudonymKeyError, load_key, pseudonym
from petscan.ingest.studies import Study, load_study
from petscan.params.schema import validate
from petscan.utils.errors import BadInputError

CLASSES = {"No cancer": "No cancer", "breast cancer": "Breast cancer"}
SUV = np.zeros((8, 6, 10), np.float32)
SUV[2:6, 1:5, 2:8] = np.linspace(1, 9, 6, dtype=np.float32)  # varies along the body axis


def labels(tmp_path, text):
    (tmp_path / "labels.csv").write_text(text)
    return read_labels(tmp_path / "labels.csv", CLASSES)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_every_generated_convention_reads_back_to_the_suv(tmp_path, convention):
    rng = np.random.default_rng(0)
    weight = write_study(tmp_path / "s", SUV, convention, "PAT-1", 5.0, rng)
    table = labels(tmp_path, f"study,class,weight_kg\ns,No cancer,{weight or ''}\n")
    ingest = validate({}).ingest
    volume = load_study(Study("s", tmp_path / "s"), table, ingest)
    # 16-bit storage: one step of the slice's own slope (max SUV 9 / 65535)
    np.testing.assert_allclose(volume.suv, SUV, atol=9 / 65535 * 1.01)
    assert volume.spacing == (5.0, 5.0, 5.0)


def test_nifti_in_bqml_uses_the_labels_table(tmp_path):
    # hand computed: one half-life of uptake -> factor = 80000 g / (4e8 Bq / 2) = 4e-4
    nib.save(nib.Nifti1Image(SUV / 4e-4, np.eye(4)), tmp_path / "n1.nii.gz")
    table = labels(
        tmp_path,
        "study,class,weight_kg,dose_bq,half_life_s,injection_time,scan_time\n"
        "n1,breast cancer,80,4e8,6000,20240102100000,20240102114000\n",
    )
    ingest = validate({"ingest": {"nifti_units": "bqml"}}).ingest
    volume = load_study(Study("n1", tmp_path / "n1.nii.gz"), table, ingest)
    np.testing.assert_allclose(volume.suv, SUV, rtol=1e-5)
    assert volume.record["scale_factor"] == pytest.approx(4e-4)
    assert volume.record["uptake_min"] == 100.0 and volume.label.folder == "breast cancer"


def test_nifti_in_bqml_without_the_dose_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(SUV, np.eye(4)), tmp_path / "n2.nii")
    table = labels(tmp_path, "study,class,weight_kg\nn2,No cancer,80\n")
    ingest = validate({"ingest": {"nifti_units": "bqml"}}).ingest
    with pytest.raises(Exception, match=r"study n2: RadionuclideTotalDose \(0018,1074\) missing"):
        load_study(Study("n2", tmp_path / "n2.nii"), table, ingest)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("study,label\ns,No cancer\n", "needs a class column and a study or patient column"),
        ("study,class\ns,lung cancer\n", r"labels.csv:2: class 'lung cancer' is not in data"),
        ("study,class,weight_kg\ns,No cancer,heavy\n", r"weight_kg = 'heavy' is not a number"),
        ("study,class\ns,No cancer\ns,breast cancer\n", "s has two classes"),
    ],
)
def test_labels_table_refusals(tmp_path, text, match):
    with pytest.raises(BadInputError, match=match):
        labels(tmp_path, text)


def test_class_names_and_folders_both_map_to_the_folder(tmp_path):
    table = labels(tmp_path, "study,patient,class\na,,Breast cancer\n,P7,breast cancer\n")
    assert table.find("a", None).folder == "breast cancer"
    assert table.find("other", "P7").folder == "breast cancer"
    assert table.find("other", "P8") is None


def test_pseudonym_key_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("K", raising=False)
    inside = tmp_path / "repo" / "key"
    inside.parent.mkdir()
    inside.write_text("s" * 40)
    with pytest.raises(PseudonymKeyError, match="inside the repository"):
        load_key("K", str(inside), tmp_path / "repo")
    outside = tmp_path / "key"
    outside.write_text("short")
    with pytest.raises(PseudonymKeyError, match="shorter than 16 bytes"):
        load_key("K", str(outside), tmp_path / "repo")
    monkeypatch.setenv("K", "e" * 20)
    key = load_key("K", str(outside), tmp_path / "repo")
    assert key == b"e" * 20
    # HMAC-SHA256 reference value
    import hashlib
    import hmac

    assert pseudonym("PAT-1", key) == "p" + hmac.new(key, b"PAT-1", hashlib.sha256).hexdigest()[:16]


def test_the_pet_nifti_is_chosen_by_name(tmp_path):
    from petscan.ingest.nifti import NiftiError

    table = labels(tmp_path, "study,class\nc1,No cancer\nc2,No cancer\n")
    ingest = validate({}).ingest
    for name, scale in (("CT", 0.0), ("PET", 2.0), ("SEG", 0.0)):  # DEEP-PSMA: PET.nii.gz
        (tmp_path / "c1").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(SUV * scale, np.eye(4)), tmp_path / "c1" / f"{name}.nii.gz")
    volume = load_study(Study("c1", tmp_path / "c1"), table, ingest)
    np.testing.assert_array_equal(volume.suv, 2 * SUV)
    (tmp_path / "c2").mkdir()
    nib.save(nib.Nifti1Image(SUV, np.eye(4)), tmp_path / "c2" / "image.nii.gz")
    with pytest.raises(NiftiError, match=r"study c2: no single NIfTI file among image.nii.gz"):
        load_study(Study("c2", tmp_path / "c2"), table, ingest)
