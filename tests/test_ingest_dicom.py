"""DICOM PET series: order, geometry checks, rescale, multi-frame, compressed syntaxes.

The series are written by `demo.dicom_pet` (one file per slice, each with its own
RescaleSlope) from a known RAS volume, and read back to that volume.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from petscan.demo.dicom_pet import PetSeriesSpec, write_pet_series
from petscan.ingest.dicom_series import SeriesError, read_pet_series
from petscan.ingest.nifti import canonical

RNG = np.random.default_rng(7)
VOLUME = RNG.uniform(0, 5000, (6, 5, 7)).astype(np.float32)  # x (R), y (A), z (S)
TOL = 5000 / 65535  # one step of the 16-bit storage


def read_ras(folder):
    pet = read_pet_series(folder, "st1")
    data, spacing = canonical(pet.data, pet.affine)
    return data, spacing, pet


def test_round_trip_with_a_slope_per_slice(tmp_path):
    paths = write_pet_series(tmp_path, VOLUME, PetSeriesSpec(spacing=(2.0, 3.0, 4.0)))
    slopes = {float(pydicom.dcmread(p).RescaleSlope) for p in paths}
    assert len(slopes) == VOLUME.shape[2]  # every slice its own slope
    data, spacing, pet = read_ras(tmp_path)
    np.testing.assert_allclose(data, VOLUME, atol=TOL)
    assert spacing == (2.0, 3.0, 4.0)
    assert pet.header.units == "BQML" and pet.header.weight_kg == 75.0


@pytest.mark.parametrize("order", ["shuffled", "reversed"])
def test_file_order_and_instance_numbers_do_not_matter(tmp_path, order):
    paths = write_pet_series(tmp_path / "w", VOLUME, PetSeriesSpec())
    names = [p.name for p in paths]
    random.Random(3).shuffle(names) if order == "shuffled" else names.reverse()
    (tmp_path / "s").mkdir()
    for path, name in zip(paths, names, strict=True):
        path.rename(tmp_path / "s" / name)
    np.testing.assert_allclose(read_ras(tmp_path / "s")[0], VOLUME, atol=TOL)


def test_other_series_and_non_dicom_files_are_named_and_left_out(tmp_path):
    write_pet_series(tmp_path, VOLUME, PetSeriesSpec())
    write_pet_series(tmp_path / "ct", VOLUME[:, :, :2], PetSeriesSpec(modality="CT"))
    (tmp_path / "README.txt").write_text("not dicom")
    data, _, pet = read_ras(tmp_path)
    np.testing.assert_allclose(data, VOLUME, atol=TOL)
    assert "README.txt: not DICOM, skipped" in pet.notes
    assert any("Modality CT, 2 files): not PET, left out" in n for n in pet.notes)


def test_a_missing_slice_is_refused(tmp_path):
    paths = write_pet_series(tmp_path, VOLUME, PetSeriesSpec())
    paths[3].unlink()
    with pytest.raises(SeriesError, match=r"study st1: a missing slice between 8 and 16 mm"):
        read_pet_series(tmp_path, "st1")


def test_a_gantry_tilt_is_refused(tmp_path):
    for k, path in enumerate(write_pet_series(tmp_path, VOLUME, PetSeriesSpec())):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 1.5 * k, 4.0 * k]
        ds.save_as(path)
    with pytest.raises(SeriesError, match=r"study st1: gantry tilt"):
        read_pet_series(tmp_path, "st1")


def test_a_non_axial_series_and_two_orientations_are_refused(tmp_path):
    paths = write_pet_series(tmp_path, VOLUME, PetSeriesSpec())
    ds = pydicom.dcmread(paths[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[0])
    with pytest.raises(SeriesError, match="more than one ImageOrientationPatient"):
        read_pet_series(tmp_path, "st1")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
        ds.save_as(path)
    with pytest.raises(SeriesError, match="not an axial series"):
        read_pet_series(tmp_path, "st1")


def test_a_folder_without_pet_is_refused(tmp_path):
    write_pet_series(tmp_path, VOLUME[:, :, :2], PetSeriesSpec(modality="CT"))
    with pytest.raises(SeriesError, match=r"study st1: no PET series \(Modality PT\) among 1"):
        read_pet_series(tmp_path, "st1")


def test_enhanced_multi_frame_pet(tmp_path):
    paths = write_pet_series(tmp_path / "single", VOLUME, PetSeriesSpec())
    slices = [pydicom.dcmread(p) for p in paths]
    random.Random(1).shuffle(slices)
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.130"
    ds.NumberOfFrames = len(slices)
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope"):
        delattr(ds, name)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = slices[0].PixelSpacing
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    groups = []
    for s in slices:
        group = Dataset()
        group.PlanePositionSequence = Sequence([Dataset()])
        group.PlanePositionSequence[0].ImagePositionPatient = s.ImagePositionPatient
        group.PixelValueTransformationSequence = Sequence([Dataset()])
        group.PixelValueTransformationSequence[0].RescaleSlope = s.RescaleSlope
        group.PixelValueTransformationSequence[0].RescaleIntercept = 0
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    (tmp_path / "multi").mkdir()
    ds.save_as(tmp_path / "multi" / "enhanced.dcm")
    np.testing.assert_allclose(read_ras(tmp_path / "multi")[0], VOLUME, atol=TOL)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_written_and_read(tmp_path, syntax):
    volume = RNG.uniform(0, 5000, (32, 32, 3)).astype(np.float32)  # openjpeg needs 32 x 32
    paths = write_pet_series(tmp_path, volume, PetSeriesSpec(transfer_syntax=syntax))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_allclose(read_ras(tmp_path)[0], volume, atol=TOL)


def test_jpeg_ls_lossless_is_decoded(tmp_path):
    # pydicom's own JPEG-LS lossless sample (no encoder is installed): its pixel data in a
    # PET series must read back as the uncompressed original
    encoded = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    original = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    paths = write_pet_series(tmp_path, np.zeros((64, 64, 2), np.float32), PetSeriesSpec())
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelRepresentation, ds.RescaleSlope = 1, 2
        ds.PixelData = encoded.PixelData
        ds.save_as(path)
    pet = read_pet_series(tmp_path, "st1")
    for k in range(2):
        np.testing.assert_array_equal(pet.data[:, :, k], 2.0 * original.T)


def test_of_two_pet_series_the_attenuation_corrected_one_is_kept(tmp_path):
    write_pet_series(tmp_path / "ac", VOLUME, PetSeriesSpec())
    nac = write_pet_series(tmp_path / "nac", VOLUME[:, :, :3] * 0, PetSeriesSpec())
    for path in nac:
        ds = pydicom.dcmread(path)
        ds.CorrectedImage, ds.SeriesDescription = ["DECY"], "PET NAC"
        ds.save_as(path)
    data, _, pet = read_ras(tmp_path)
    np.testing.assert_allclose(data, VOLUME, atol=TOL)
    assert any("'PET NAC' without attenuation correction" in n for n in pet.notes)
    for path in (tmp_path / "ac").iterdir():  # now neither is corrected: refused
        ds = pydicom.dcmread(path)
        ds.CorrectedImage = ["DECY"]
        ds.save_as(path)
    with pytest.raises(SeriesError, match=r"study st1: 2 PET series \(.*\) and not one"):
        read_pet_series(tmp_path, "st1")


def jpeg_lossless_sv1(image: np.ndarray) -> bytes:
    """A minimal JPEG lossless encoder (process 14, selection value 1, 16-bit grey)."""
    rows, cols = image.shape
    x = image.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << 15
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) & 0xFFFF
    diff = np.where(diff >= 32768, diff - 65536, diff)
    bits = []
    for d in diff.ravel().tolist():
        s = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(s, "05b"))  # 17 codes of length 5: code == category
        if 0 < s < 16:
            bits.append(format(d if d > 0 else d + (1 << s) - 1, f"0{s}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0)
    sof = bytes([0xFF, 0xC3, 0, 11, 16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    sof += bytes([1, 1, 0x11, 0])
    dht = bytes([0xFF, 0xC4, 0, 36, 0]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def test_jpeg_lossless_sv1_is_decoded(tmp_path):
    # no JPEG lossless encoder is installed: the minimal one above (an independent writer)
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    stored = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    stored[0, 0], stored[0, 1] = 0, 32768  # the +-32768 difference: category 16
    paths = write_pet_series(tmp_path, np.zeros((6, 5, 2), np.float32), PetSeriesSpec())
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.RescaleSlope = "0.5"
        ds.PixelData = encapsulate([jpeg_lossless_sv1(stored)])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    pet = read_pet_series(tmp_path, "st1")
    for k in range(2):
        np.testing.assert_array_equal(pet.data[:, :, k], 0.5 * stored.T.astype(np.float32))
