"""The contact sheet: one labelled row per class, a few captioned thumbnails each."""

from __future__ import annotations

import numpy as np
from PIL import Image

from petscan.data import contact_sheet as cs
from petscan.demo import generate as synthetic

CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}


def make_raw(tmp_path):
    raw = tmp_path / "raw"
    synthetic.generate(
        raw, {f: 3 for f in CLASSES}, seed=1, base_height=64, workers=1, progress=False
    )
    return raw


def test_layout_one_row_per_class(tmp_path):
    raw = make_raw(tmp_path)
    out = cs.contact_sheet(raw, CLASSES, tmp_path / "sheet.png", per_class=2, thumb_height=120)
    sheet = np.asarray(Image.open(out).convert("L"))
    cell, row = int(120 * 0.75), 120 + cs.CAPTION_HEIGHT + cs.PAD
    assert sheet.shape == (cs.PAD + 3 * row, cs.LABEL_WIDTH + 2 * (cell + cs.PAD) + cs.PAD)
    for r in range(3):
        top = cs.PAD + r * row
        label = sheet[top : top + 120, : cs.LABEL_WIDTH]
        assert (label < 128).sum() > 50  # the class name is written
        for c in range(2):
            left = cs.LABEL_WIDTH + c * (cell + cs.PAD)
            thumb = sheet[top + 2 : top + 118, left + 2 : left + cell - 2]
            assert (thumb < 100).sum() > 10  # dark uptake of a PET image
            caption = sheet[top + 120 + 2 : top + row - 2, left : left + cell]
            assert (caption < 128).sum() > 20  # its file name underneath


def test_sample_is_seeded_and_bounded(tmp_path):
    raw = make_raw(tmp_path)
    first = cs.pick_files(raw, "breast cancer", 2, seed=0)
    assert first == cs.pick_files(raw, "breast cancer", 2, seed=0)
    assert len(first) == 2 and first == sorted(first)
    assert len(cs.pick_files(raw, "breast cancer", 10, seed=0)) == 3  # all there are


def test_unreadable_file_is_shown_not_fatal(tmp_path):
    raw = tmp_path / "raw"
    (raw / "No cancer").mkdir(parents=True)
    (raw / "No cancer" / "broken_v1.png").write_bytes(b"not a png")
    Image.new("L", (30, 60), 255).save(raw / "No cancer" / "white_v1.png")
    out = cs.contact_sheet(raw, {"No cancer": "No cancer"}, tmp_path / "s.png", per_class=2)
    assert Image.open(out).size[1] == cs.PAD + cs.THUMB_HEIGHT + cs.CAPTION_HEIGHT + cs.PAD


def test_main_reads_the_data_section(tmp_path, capsys):
    raw = make_raw(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  raw_dir: {raw}\n  classes:\n"
        + "".join(f"    {k}: {v}\n" for k, v in CLASSES.items())
    )
    out = tmp_path / "reports" / "contact_sheet.png"
    assert cs.main(["--params", str(params), "--out", str(out), "--per-class", "3"]) == 0
    assert Image.open(out).format == "PNG"
    assert "3 classes x 3 images" in capsys.readouterr().out
    missing = ["--params", str(params), "--raw-dir", str(tmp_path / "none"), "--out", str(out)]
    assert cs.main(missing) == 1
    assert "petscan generate" in capsys.readouterr().err
