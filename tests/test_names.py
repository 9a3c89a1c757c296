"""File names that are not valid UTF-8 (bytes such as b"\\xff", which Python keeps as
surrogates): split and predict report them, shown with backslash escapes, and leave them out;
every output is still written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import load_script, unique_png

from petscan.data.folders import printable, scan_images

SPLIT_STAGE = load_script("stages/split.py")
REASON = "the file name is not valid UTF-8 (shown with \\x escapes): rename the file"


def bad_name(folder, name: bytes, number: int) -> str:
    """Write an image under the byte name `name` in `folder`; its path as Python sees it."""
    path = os.path.join(os.fsencode(folder), name)
    return str(unique_png(Path(os.fsdecode(path)), number, size=40))


def test_printable_escapes_only_what_is_not_utf8():
    assert printable(os.fsdecode(b"pet-1_v1\xff.png")) == "pet-1_v1\\xff.png"
    assert printable("pét-1_v1.png") == "pét-1_v1.png"


def test_split_reports_a_name_that_is_not_utf8_and_writes_every_output(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, caplog
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    bad_name(raw / "No cancer", b"pet-1_v1\xff.png", 901)
    os.mkdir(os.path.join(os.fsencode(raw / "breast cancer"), b"sub\xfe"))
    bad_name(os.path.join(os.fsencode(raw / "breast cancer"), b"sub\xfe"), b"ok_v1.png", 902)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data_params, "split": split_params}))
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    assert SPLIT_STAGE.main(["--params", str(params), "--no-progress"]) == 0
    out = tmp_path / "data" / "split"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.csv", "val.csv", "test.csv", "index.csv", "summary.json", "report.json"]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["bad_files"] == [
        {"path": "data/raw/No cancer/pet-1_v1\\xff.png", "class": "No cancer", "reason": REASON},
        {
            "path": "data/raw/breast cancer/sub\\xfe/ok_v1.png",
            "class": "Breast cancer",
            "reason": REASON,
        },
    ]
    assert len(pd.read_csv(out / "index.csv")) == 30
    assert f"  bad: data/raw/No cancer/pet-1_v1\\xff.png: {REASON}" in caplog.text


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from conftest import tiny_image_classifier

    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_image_classifier(seed=3).save(path)
    return path


def test_predict_skips_a_name_that_is_not_utf8_with_one_line(keras_file, tmp_path, capsys):
    from petscan.serving import predict

    scans = tmp_path / "scans"
    unique_png(scans / "good.png", 1, size=40)
    inside = bad_name(scans, b"pet-1_v1\xff.png", 2)
    given = bad_name(tmp_path, b"given\xff.png", 3)
    params = tmp_path / "params.yaml"
    classes = {"No cancer": "No cancer", "b": "Breast cancer", "p": "Prostate cancer"}
    params.write_text(yaml.safe_dump({"data": {"classes": classes}}))
    csv = tmp_path / "out.csv"
    argv = [str(scans), given, "--model", str(keras_file), "--params", str(params)]
    assert predict.main([*argv, "--csv", str(csv)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"skipped {printable(inside)}: {REASON}" in err
    assert (
        f"skipped {printable(given)}: the path is not valid UTF-8 (shown with \\x escapes)" in err
    )
    assert pd.read_csv(csv)["path"].tolist() == [(scans / "good.png").as_posix()]
    assert predict.main(argv) == 0  # the table on stdout too
    assert "good.png" in capsys.readouterr().out


def test_scan_images_lists_the_bad_name_as_a_problem(tmp_path):
    unique_png(tmp_path / "a.png", 1)
    inside = bad_name(tmp_path, b"b\xff.png", 2)
    files, problems = scan_images(tmp_path)
    assert [f.name for f in files] == ["a.png"]
    assert problems == [{"path": inside, "reason": REASON}]
