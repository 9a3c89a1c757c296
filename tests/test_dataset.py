"""dataset.py: indexing the class folders, odd and broken files, duplicates, patient groups."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, PATIENT_PATTERN, unique_png
from PIL import Image

from petscan.data.index import (
    DataError,
    check_classes,
    drop_cross_class_duplicates,
    duplicate_groups,
    group_ids,
    index_images,
    patient_of,
)
from petscan.params.schema import section
from petscan.utils.errors import ParamsError


def huge_png_header(path, width=60_000, height=60_000):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def odd_folder(raw):
    """One class folder holding every kind of broken and odd-but-valid file."""
    folder = raw / "breast cancer"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "empty_v1.png").write_bytes(b"")
    (folder / "text_v1.png").write_text("not an image\n")
    Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)).save(folder / "trunc_v1.png")
    data = (folder / "trunc_v1.png").read_bytes()
    (folder / "trunc_v1.png").write_bytes(data[: len(data) // 2])
    huge_png_header(folder / "huge_v1.png")
    # odd modes, each with some content (a blank image is refused)
    Image.fromarray(rng.integers(0, 255, (4, 6, 4), np.uint8), "RGBA").save(folder / "rgba_v1.png")
    Image.fromarray(np.arange(25, dtype=np.uint16).reshape(5, 5) * 1000).save(
        folder / "grey16_v1.png"
    )
    Image.fromarray(rng.integers(0, 255, (8, 8, 4), np.uint8), "CMYK").save(folder / "cmyk_v1.jpg")
    Image.fromarray(np.arange(9, dtype=np.uint8).reshape(3, 3)).convert("P").save(
        folder / "palette_v1.png"
    )
    (folder / "notes.txt").write_text("a note")
    return folder


def test_odd_and_broken_files_are_reported_and_valid_ones_kept(tmp_path):
    raw = tmp_path / "data" / "raw"
    odd_folder(raw)
    index = index_images(raw, CLASSES, PATIENT_PATTERN, 64, 50_000_000, root=tmp_path)
    reasons = {entry["path"].split("/")[-1]: entry["reason"] for entry in index.bad_files}
    assert set(reasons) == {"empty_v1.png", "text_v1.png", "trunc_v1.png", "huge_v1.png"}
    assert reasons["empty_v1.png"] == "empty file (0 bytes)"
    assert reasons["text_v1.png"] == "not an image (unknown format)"
    assert reasons["trunc_v1.png"].startswith("corrupt or truncated image")
    assert reasons["huge_v1.png"].startswith("too large: ")  # PIL refuses it at the header
    assert "3600000000 pixels" in reasons["huge_v1.png"]
    assert all(entry["class"] == "Breast cancer" for entry in index.bad_files)
    kept = index.images.set_index(index.images["path"].str.split("/").str[-1])
    assert kept["mode"].to_dict() == {
        "cmyk_v1.jpg": "CMYK",
        "grey16_v1.png": "I;16",
        "palette_v1.png": "P",
        "rgba_v1.png": "RGBA",
    }
    assert kept.loc["rgba_v1.png", ["width", "height"]].tolist() == [6, 4]
    assert [entry["path"] for entry in index.skipped_files] == ["data/raw/breast cancer/notes.txt"]
    assert "not an image type" in index.skipped_files[0]["reason"]


def test_index_columns_hash_size_and_relative_posix_paths(tmp_path):
    raw = tmp_path / "data" / "raw"
    path = unique_png(raw / "No cancer" / "nested" / "deeper" / "pt-7_v2.png", 7)
    unique_png(raw / "prostate cancer" / "pt-9_v1.png", 9)
    index = index_images(raw, CLASSES, PATIENT_PATTERN, root=tmp_path, progress=False)
    row = index.images.iloc[0]
    assert row["path"] == "data/raw/No cancer/nested/deeper/pt-7_v2.png"
    assert row["folder"] == "No cancer"  # nested folders belong to their top class folder
    assert (row["class"], row["label"]) == ("No cancer", 0)
    assert index.images.iloc[1][["class", "label"]].tolist() == ["Prostate cancer", 2]
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["size_bytes"] == path.stat().st_size
    assert (row["patient"], row["patient_matched"]) == ("pt-7", True)
    assert index.location == "data/raw"


def test_unknown_folders_top_level_files_and_hidden_files(tmp_path):
    raw = tmp_path / "raw"
    unique_png(raw / "No cancer" / "a_v1.png", 1)
    unique_png(raw / "lung cancer" / "b_v1.png", 2)
    unique_png(raw / "lung cancer" / "sub" / "c_v1.png", 3)
    unique_png(raw / "loose_v1.png", 4)
    unique_png(raw / "No cancer" / ".thumbs" / "d_v1.png", 5)
    (raw / "No cancer" / ".DS_Store").write_bytes(b"\0")
    index = index_images(raw, CLASSES, None, root=tmp_path, progress=False)
    assert index.images["path"].tolist() == ["raw/No cancer/a_v1.png"]
    assert index.ignored_folders == [
        {"folder": "raw/lung cancer", "files": 2, "reason": "folder not in data.classes"}
    ]
    assert index.skipped_files == [
        {"path": "raw/loose_v1.png", "reason": "not inside a class folder"}
    ]


def test_patient_pattern_rules():
    pattern = re.compile(PATIENT_PATTERN)
    assert patient_of("pet-00012_v2", "x/pet-00012_v2.png", pattern) == ("pet-00012", True)
    assert patient_of("scan 12", "x/scan 12.png", pattern) == ("x/scan 12.png", False)
    assert patient_of("pet-00012_v2", "x/pet-00012_v2.png", None) == ("x/pet-00012_v2.png", True)
    # the schema checks data.patient_pattern, once, before any stage runs
    with pytest.raises(ParamsError, match=r"needs a named group \(\?P<patient>"):
        section("data", {"patient_pattern": r"^(\w+)_v"})
    with pytest.raises(ParamsError, match="not a regular expression"):
        section("data", {"patient_pattern": "("})


def test_unmatched_names_are_their_own_patient_and_noted(tmp_path):
    raw = tmp_path / "raw"
    unique_png(raw / "No cancer" / "pt-1_v1.png", 1)
    unique_png(raw / "No cancer" / "IMG 0003.png", 2)
    index = index_images(raw, CLASSES, PATIENT_PATTERN, root=tmp_path, progress=False)
    assert index.unmatched_patients == ["raw/No cancer/IMG 0003.png"]
    assert index.images["patient"].tolist() == ["No cancer/IMG 0003.png", "pt-1"]


def test_max_file_mb_limit(tmp_path):
    raw = tmp_path / "raw"
    path = raw / "No cancer" / "big_v1.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (800, 800), np.uint8)).save(path)
    index = index_images(raw, CLASSES, max_file_mb=0.5, root=tmp_path, progress=False)
    assert index.images.empty
    assert index.bad_files[0]["reason"] == "file too large: 0.6 MB (limit split.max_file_mb = 0.5)"


def test_duplicates_same_class_and_cross_class(tmp_path):
    raw = tmp_path / "raw"
    first = unique_png(raw / "No cancer" / "a_v1.png", 1)
    shutil.copy(first, raw / "No cancer" / "b_v1.png")
    cross = unique_png(raw / "breast cancer" / "c_v1.png", 2)
    unique_png(raw / "prostate cancer" / "e_v1.png", 3)
    shutil.copy(cross, raw / "prostate cancer" / "d_v1.png")
    index = index_images(raw, CLASSES, None, root=tmp_path, progress=False)
    groups = duplicate_groups(index.images)
    assert [group["paths"] for group in groups] == [
        ["raw/No cancer/a_v1.png", "raw/No cancer/b_v1.png"],
        ["raw/breast cancer/c_v1.png", "raw/prostate cancer/d_v1.png"],
    ]
    kept, crossed = drop_cross_class_duplicates(index.images)
    assert crossed[0]["classes"] == ["Breast cancer", "Prostate cancer"]
    assert kept["path"].tolist() == [
        "raw/No cancer/a_v1.png",
        "raw/No cancer/b_v1.png",
        "raw/prostate cancer/e_v1.png",
    ]


def test_group_ids_union_patients_and_hashes():
    frame = pd.DataFrame(
        {
            "patient": ["p1", "p1", "p2", "p3", "p4", "p5"],
            "sha256": ["h1", "h2", "h3", "h2", "h4", "h3"],
        }
    )
    # p1 (h1, h2) joins p3 through h2; p2 joins p5 through h3; p4 stands alone
    assert group_ids(frame).tolist() == [0, 0, 1, 0, 2, 1]
    assert group_ids(frame, by=("sha256",)).tolist() == [0, 1, 2, 1, 3, 2]


def test_missing_raw_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"does not exist: run `make data`.*data.raw_dir"):
        index_images(tmp_path / "nowhere", CLASSES, root=tmp_path)


def test_empty_class_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    unique_png(raw / "No cancer" / "a_v1.png", 1)
    unique_png(raw / "prostate cancer" / "b_v1.png", 2)
    (raw / "breast cancer").mkdir()
    (raw / "breast cancer" / "x_v1.png").write_bytes(b"")
    index = index_images(raw, CLASSES, root=tmp_path, progress=False)
    with pytest.raises(DataError, match=r"class 'Breast cancer' has no usable image") as caught:
        check_classes(index, index.images, CLASSES)
    assert "breast cancer (every file is bad" in str(caught.value)
    assert "remove the folder from data.classes in params.yaml" in str(caught.value)
    shutil.rmtree(raw / "breast cancer")
    with pytest.raises(DataError, match=r"breast cancer \(folder missing\)"):
        check_classes(index, index.images, CLASSES)


def test_no_usable_image_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    (raw / "No cancer").mkdir(parents=True)
    (raw / "No cancer" / "a.png").write_text("text")
    index = index_images(raw, CLASSES, root=tmp_path, progress=False)
    with pytest.raises(DataError, match=r"no usable image under .*\(1 bad, 0 skipped"):
        check_classes(index, index.images, CLASSES)
