"""Bad input built on the fly: symbolic links, tiny and elongated images, animations,
failed splits, exit codes."""

from __future__ import annotations

import json
import os

import numpy as np
from conftest import load_script, unique_png, write_png
from PIL import Image

from petscan.images import ImageError, list_images, scan_images
from petscan.split import make_split

SPLIT_STAGE = load_script("stages/split.py")


def test_symlink_loop_counts_each_file_once_and_is_reported(
    make_raw_dir, data_params, split_params
):
    raw = make_raw_dir({"No cancer": 20, "breast cancer": 20, "prostate cancer": 20})
    sub = raw / "No cancer" / "sub"
    unique_png(sub / "pt-09999_v1.png", 9999)
    os.symlink(".", sub / "again")  # sub/again -> sub: a loop
    os.symlink("..", raw / "breast cancer" / "up")  # back to data/raw: every class again
    result = make_split(data_params, split_params, root=raw.parents[1], progress=False)
    paths = result.images["path"].tolist()
    assert len(paths) == 61 and len(set(paths)) == 61
    assert result.report["cross_class_duplicates"] == []
    problems = {p["path"]: p["reason"] for p in result.report["link_problems"]}
    assert set(problems) == {"data/raw/No cancer/sub/again", "data/raw/breast cancer/up"}
    assert all(reason.startswith("symbolic link loop") for reason in problems.values())
    assert result.summary["files"]["link_problems"] == 2
    assert result.summary["total"]["total"] == 61


def test_links_leaving_the_folder_are_followed_once_and_noted(
    make_raw_dir, data_params, split_params, tmp_path
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    outside = tmp_path / "nas"
    for k in range(3):
        unique_png(outside / f"ext-{k}_v1.png", 500 + k)
    os.symlink(outside, raw / "No cancer" / "nas")
    os.symlink(outside, raw / "No cancer" / "nas-again")  # the same folder twice
    os.symlink(outside / "ext-0_v1.png", raw / "No cancer" / "alias_v1.png")  # a file link
    os.symlink(tmp_path / "absent.png", raw / "No cancer" / "broken_v1.png")
    result = make_split(data_params, split_params, root=raw.parents[1], progress=False)
    assert (result.images["class"] == "No cancer").sum() == 13
    assert result.summary["files"]["duplicate_groups"] == 0, "one real file is not a duplicate"
    problems = {p["path"]: p["reason"] for p in result.report["link_problems"]}
    assert problems == {
        "data/raw/No cancer/broken_v1.png": "broken symbolic link, or a loop of links",
        "data/raw/No cancer/nas-again": "symbolic link loop: folder already scanned",
    }
    notes = {p["path"]: p["reason"] for p in result.report["link_notes"]}
    assert notes["data/raw/No cancer/nas"] == "symbolic link leaving the data folder: followed"
    assert notes["data/raw/No cancer/nas/ext-0_v1.png"].startswith("the same file as")


def test_predict_folder_scan_reports_looping_links(tmp_path):
    unique_png(tmp_path / "scans" / "a.png", 1)
    os.symlink("b.png", tmp_path / "scans" / "c.png")
    os.symlink("c.png", tmp_path / "scans" / "b.png")  # b -> c -> b
    files, problems = scan_images(tmp_path / "scans")
    assert [f.name for f in files] == ["a.png"]
    assert sorted(p["path"].rsplit("/", 1)[1] for p in problems) == ["b.png", "c.png"]
    assert list_images(tmp_path / "scans") == files


def test_tiny_elongated_and_animated_images_are_reported_bad(
    make_raw_dir, data_params, split_params
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    folder = raw / "No cancer"
    write_png(folder / "dot_v1.png", np.zeros((1, 1), dtype=np.uint8))
    write_png(folder / "line_v1.png", np.zeros((5000, 1), dtype=np.uint8))
    write_png(folder / "wide_v1.png", np.zeros((10, 90), dtype=np.uint8))
    frames = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    frames[0].save(folder / "anim_v1.gif", save_all=True, append_images=frames[1:])
    split_params.update(min_side=8, max_aspect=8.0)
    result = make_split(data_params, split_params, root=raw.parents[1], progress=False)
    bad = {b["path"].rsplit("/", 1)[1]: b["reason"] for b in result.report["bad_files"]}
    assert bad == {
        "anim_v1.gif": "3 frames (an animation or a stack of images); only single images are "
        "used: export the one 2D image",
        "dot_v1.png": "too small: 1 x 1 pixels (split.min_side = 8)",
        "line_v1.png": "too small: 1 x 5000 pixels (split.min_side = 8)",
        "wide_v1.png": "too elongated: 90 x 10 pixels, aspect ratio 9.0 (split.max_aspect = 8)",
    }
    assert len(result.images) == 30


def test_failed_split_writes_its_report_and_removes_stale_outputs(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, capsys
):
    import yaml

    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data_params, "split": split_params}))
    monkeypatch.chdir(tmp_path)
    assert SPLIT_STAGE.main(["--params", str(params), "--no-progress"]) == 0
    out = tmp_path / "data" / "split"
    assert {p.name for p in out.iterdir()} >= {"train.csv", "summary.json", "report.json"}
    for path in (raw / "prostate cancer").iterdir():  # the class now has only a bad file
        path.unlink()
    (raw / "prostate cancer" / "broken_v1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    capsys.readouterr()
    assert SPLIT_STAGE.main(["--params", str(params), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("split: error: class 'Prostate cancer' has no")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"], "stale outputs removed"
    report = json.loads((out / "report.json").read_text())
    assert report["error"].startswith("class 'Prostate cancer' has no usable image")
    assert [b["path"] for b in report["bad_files"]] == ["data/raw/prostate cancer/broken_v1.png"]


def test_shape_check_names_the_param():
    from petscan.images import check_shape

    check_shape("x.png", 32, 256, 32, 8.0)
    try:
        check_shape("x.png", 31, 100, 32, None)
    except ImageError as err:
        assert err.reason == "too small: 31 x 100 pixels (split.min_side = 32)"
    else:
        raise AssertionError("a 31-pixel side passed min_side 32")
