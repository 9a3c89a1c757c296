"""Bad input built on the fly: symbolic links, tiny and elongated images, animations,
failed splits, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, load_script, random_weights_meta, unique_png, write_png
from PIL import Image

from petscan.data.folders import list_images, scan_images
from petscan.data.images import ImageError
from petscan.data.split import make_split
from petscan.params.schema import section
from petscan.utils import errors
from petscan.utils.io import sha256_file

SPLIT_STAGE = load_script("stages/split.py")


def test_symlink_loop_counts_each_file_once_and_is_reported(
    make_raw_dir, data_params, split_params
):
    raw = make_raw_dir({"No cancer": 20, "breast cancer": 20, "prostate cancer": 20})
    sub = raw / "No cancer" / "sub"
    unique_png(sub / "pt-09999_v1.png", 9999)
    os.symlink(".", sub / "again")  # sub/again -> sub: a loop
    os.symlink("..", raw / "breast cancer" / "up")  # back to data/raw: every class again
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
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
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
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
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
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
    from petscan.data.images import check_shape

    check_shape("x.png", 32, 256, 32, 8.0)
    try:
        check_shape("x.png", 31, 100, 32, None)
    except ImageError as err:
        assert err.reason == "too small: 31 x 100 pixels (split.min_side = 32)"
    else:
        raise AssertionError("a 31-pixel side passed min_side 32")


# --------------------------------------------------------------------------- featurize


def _featurize_repo(root, make_raw_dir, data_params, split_params):
    """A tiny repo: data/raw, its split (via the split stage) and a random tiny backbone."""
    import yaml

    from petscan.model.backbones import build_backbone

    make_raw_dir({"No cancer": 8, "breast cancer": 8, "prostate cancer": 8})
    params = {
        "data": data_params,
        "split": {**split_params, "ratios": [0.5, 0.25, 0.25]},
        "weights": {"dir": "models/backbone"},
        "model": {"backbone": "tiny", "input_size": [32, 32], "head_units": 8},
        "featurize": {"batch_size": 8, "augment_views": 1, "out_dir": "data/features"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert SPLIT_STAGE.main(["--no-progress"]) == 0
    (root / "models/backbone").mkdir(parents=True)
    build_backbone("tiny", (32, 32, 3)).save(root / "models/backbone/weights.h5")
    (root / "models/backbone/weights.json").write_text(json.dumps(random_weights_meta()))


def test_file_corrupted_after_split_gives_one_line_and_no_partial_outputs(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, capsys
):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    _featurize_repo(tmp_path, make_raw_dir, data_params, split_params)
    stage = load_script("stages/featurize.py")
    test_file = tmp_path / pd.read_csv(tmp_path / "data/split/test.csv")["path"].iloc[-1]
    test_file.write_bytes(test_file.read_bytes()[:40])  # truncated after the split
    capsys.readouterr()
    assert stage.main(["--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"featurize: error: {test_file} changed after the split (its "
        "sha256 differs from data/split/test.csv): rerun `dvc repro` (the split stage checks "
        "the file again)"
    ]
    assert not (tmp_path / "data/features").exists(), "no split's features were written"


def test_featurize_failing_in_the_last_split_keeps_the_earlier_outputs(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, capsys
):
    """A file that passes the checks but fails to decode inside tf.data (the sha256 in the
    manifest is made to match): one line, and the old outputs stay whole."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    _featurize_repo(tmp_path, make_raw_dir, data_params, split_params)
    stage = load_script("stages/featurize.py")
    assert stage.main(["--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "data/features").iterdir()}
    assert sorted(before) == [f"{s}.{x}" for s in ("test", "train", "val") for x in ("json", "npy")]
    manifest = tmp_path / "data/split/test.csv"
    frame = pd.read_csv(manifest)
    bad = tmp_path / frame["path"].iloc[-1]
    bad.write_bytes(bad.read_bytes()[:60])
    frame.loc[len(frame) - 1, "sha256"] = sha256_file(bad)
    frame.to_csv(manifest, index=False)
    capsys.readouterr()
    assert stage.main(["--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"featurize: error: {bad}: corrupt or truncated")
    assert "fix or remove the file, then rerun `dvc repro`" in err[0]
    after = {p.name: p.read_bytes() for p in (tmp_path / "data/features").iterdir()}
    assert after == before, "train and val were redone but not moved in: all or nothing"
    assert not list(tmp_path.glob("data/.features.partial*"))
    # as `dvc repro` runs it (a fresh interpreter, no TF_CPP_MIN_LOG_LEVEL set): the line alone
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PETSCAN_VERBOSE"))}
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/featurize.py"), "--no-progress"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == err, "no TensorFlow log lines, no tracebacks"


# --------------------------------------------------------------------------- weights


def _tiny_weights(path):
    from petscan.model.backbones import build_backbone

    build_backbone("tiny", (32, 32, 3)).save(path)
    return path


def test_truncated_hdf5_weights_fall_back_with_the_reason(tmp_path, caplog):
    """A real HDF5 file cut in half: reported as damaged, the random fallback runs, and the
    next run is up to date (the refused file does not "appear" again)."""
    import logging

    from petscan.params import loading, schema
    from petscan.pipeline import fetch_weights as stage

    caplog.set_level(logging.INFO, logger="petscan.pipeline.fetch_weights")
    data = _tiny_weights(tmp_path / "full.h5").read_bytes()
    (tmp_path / "local.h5").write_bytes(data[: len(data) // 2])
    wp = {
        "dir": "out",
        "sources": [{"type": "file", "path": "local.h5"}],
        "fallback": "random",
        "seed": 3,
    }
    model = {"backbone": "tiny", "input_size": [32, 32]}
    params = loading.StageParams(schema.validate({"weights": wp, "model": model}), stage.SECTIONS)
    meta = stage.fetch_weights(params, tmp_path, repo=tmp_path, progress=False)
    assert meta["random_init"] is True
    assert (
        f"file local.h5: not a Keras .h5 weights file: it is a damaged or truncated HDF5 "
        f"file of {len(data) // 2} bytes" in caplog.text
    )
    assert list(meta["rejected_files"]) == [str(tmp_path / "local.h5")]
    stamp = (tmp_path / "out" / "weights.json").stat().st_mtime_ns
    caplog.clear()
    again = stage.fetch_weights(params, tmp_path, repo=tmp_path, progress=False)
    assert again["weights_sha256"] == meta["weights_sha256"]
    assert "appeared" not in caplog.text and "is up to date" in caplog.text
    assert (tmp_path / "out" / "weights.json").stat().st_mtime_ns == stamp
    # a different file at that path is new: it replaces the random init
    (tmp_path / "local.h5").write_bytes(data)
    fixed = stage.fetch_weights(params, tmp_path, repo=tmp_path, progress=False)
    assert fixed["random_init"] is False and "a weights file appeared" in caplog.text


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from conftest import tiny_image_classifier

    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_image_classifier(seed=3).save(path)
    return path


@pytest.fixture
def predict_setup(tmp_path):
    import yaml

    unique_png(tmp_path / "scans" / "a.png", 1, size=40)
    os.symlink("loop-b.png", tmp_path / "scans" / "loop-a.png")
    os.symlink("loop-a.png", tmp_path / "scans" / "loop-b.png")
    params = tmp_path / "params.yaml"
    classes = {"No cancer": "No cancer", "b": "Breast cancer", "p": "Prostate cancer"}
    params.write_text(yaml.safe_dump({"data": {"classes": classes}}))
    return tmp_path / "scans", params


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: b"", "it is an empty file"),
        (lambda data: data[: len(data) // 2], "a .keras file is a zip archive, this is"),
        (lambda data: os.urandom(2000), "a .keras file is a zip archive, this is"),
    ],
    ids=["empty", "truncated", "random-bytes"],
)
def test_predict_names_a_broken_keras_file(keras_file, predict_setup, tmp_path, damage, reason):
    from petscan.serving import predict

    scans, params = predict_setup
    broken = tmp_path / "broken.keras"
    broken.write_bytes(damage(keras_file.read_bytes()))
    result = subprocess.run(
        [sys.executable, "-m", "petscan.cli", "predict", str(scans), "--model", str(broken),
         "--params", str(params)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "not found" not in lines[0].lower()
    assert lines[0].startswith(f"petscan predict: error: {broken} is not a valid Keras model")
    assert reason in lines[0]
    with pytest.raises(errors.BadInputError, match="is not a valid Keras model"):
        predict.load_keras_file(broken)


def test_predict_checks_csv_path_and_classes_before_predicting(
    keras_file, predict_setup, tmp_path, monkeypatch, capsys
):
    import yaml

    from petscan.serving import predict

    scans, params = predict_setup
    calls = []
    monkeypatch.setattr(predict, "predict_paths", lambda *a, **k: calls.append(a))
    folder = tmp_path / "out"
    folder.mkdir()
    argv = [str(scans), "--model", str(keras_file), "--params", str(params)]
    assert predict.main([*argv, "--csv", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"petscan predict: error: --csv {folder} is a folder: give a file name, "
        f"e.g. {folder}/predictions.csv\n"
    )
    two = {"data": {"classes": {"a": "A", "b": "B"}}, "train": {"loss": {"alpha": [0.5, 0.5]}}}
    params.write_text(yaml.safe_dump(two))
    assert predict.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"petscan predict: error: the model {keras_file} outputs 3 classes but 2")
    assert calls == [], "nothing was predicted (and then lost)"


def test_predict_reports_links_that_loop(keras_file, predict_setup, capsys):
    from petscan.serving import predict

    scans, params = predict_setup
    assert predict.main([str(scans), "--model", str(keras_file), "--params", str(params)]) == 0
    captured = capsys.readouterr()
    assert "a.png" in captured.out
    skipped = sorted(line for line in captured.err.splitlines() if line.startswith("skipped"))
    assert skipped == [
        f"skipped {scans.as_posix()}/loop-a.png: broken symbolic link, or a loop of links",
        f"skipped {scans.as_posix()}/loop-b.png: broken symbolic link, or a loop of links",
    ]
