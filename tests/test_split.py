"""data/split.py and the split stage (pipeline/split.py): the seed's counts, group integrity,
determinism, reports."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, load_script, unique_png

from petscan.data.index import DataError
from petscan.data.split import (
    MANIFEST_COLUMNS,
    SPLITS,
    group_split,
    make_split,
    split_counts,
)
from petscan.params.loading import StageParams
from petscan.params.schema import section, validate
from petscan.pipeline.split import SECTIONS
from petscan.pipeline.split import split as split_stage
from petscan.utils.errors import ParamsError

SEED_TOTALS = {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}


def stage_params(data_params, split_params) -> StageParams:
    """What the split stage reads of a params file holding these two sections."""
    return StageParams(validate({"data": data_params, "split": split_params}), SECTIONS)


def sections(data_params, split_params):
    """The typed `data` and `split` sections `make_split` takes."""
    return section("data", data_params), section("split", split_params)


def write_params(tmp_path, data_params, split_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data_params, "split": split_params}))
    return path


def test_split_counts_reproduce_the_seed():
    ratios = (0.9, 0.05, 0.05)
    assert split_counts(424, ratios) == (381, 21, 22)
    assert split_counts(371, ratios) == (333, 18, 20)
    assert split_counts(398, ratios) == (358, 19, 21)
    totals = np.sum([split_counts(n, ratios) for n in (424, 371, 398)], axis=0)
    assert totals.tolist() == [1072, 58, 63]
    assert split_counts(0, ratios) == (0, 0, 0)


@pytest.mark.parametrize("ratios", [(0.9, 0.1), (0.8, 0.1, 0.2), (1.1, -0.05, -0.05)])
def test_bad_ratios_are_refused(ratios):
    with pytest.raises(ParamsError, match=r"split\.ratios"):
        section("split", {"ratios": list(ratios)})


def test_image_mode_on_the_seed_sized_folder(make_raw_dir, data_params, split_params, tmp_path):
    make_raw_dir(SEED_TOTALS, views=(1, 3))
    split_params["mode"] = "image"
    result = split_stage(stage_params(data_params, split_params), root=tmp_path, progress=False)
    summary = json.loads((tmp_path / "data/split/summary.json").read_text())
    assert summary == result.summary
    assert {s: summary[s]["total"] for s in SPLITS} == {"train": 1072, "val": 58, "test": 63}
    assert [summary["train"][c] for c in ("No cancer", "Breast cancer", "Prostate cancer")] == [
        381,
        333,
        358,
    ]
    assert [summary["val"][c] for c in ("No cancer", "Breast cancer", "Prostate cancer")] == [
        21,
        18,
        19,
    ]
    assert [summary["test"][c] for c in ("No cancer", "Breast cancer", "Prostate cancer")] == [
        22,
        20,
        21,
    ]
    # by image, patients straddle splits: the leak the group mode removes
    assert summary["patients"]["in_several_splits"] > 0
    train = pd.read_csv(tmp_path / "data/split/train.csv", dtype={"patient": str})
    assert train.columns.tolist() == list(MANIFEST_COLUMNS)
    assert train["path"].tolist() == sorted(train["path"])
    assert train["path"].str.startswith("data/raw/").all()
    assert all((tmp_path / p).is_file() for p in train["path"].head(20))
    labels = {"No cancer": 0, "Breast cancer": 1, "Prostate cancer": 2}
    assert (train["class"].map(labels) == train["label"]).all()


def test_image_mode_follows_the_split_folders_recipe(make_raw_dir, data_params, split_params):
    """Per class: files sorted by name, random.Random(seed).shuffle, then sliced."""
    raw = make_raw_dir({"No cancer": 20, "breast cancer": 20, "prostate cancer": 20})
    split_params["mode"] = "image"
    result = make_split(*sections(data_params, split_params), root=raw.parents[1], progress=False)
    names = sorted(p.name for p in (raw / "breast cancer").iterdir())
    random.Random(101).shuffle(names)
    rows = result.images[result.images["class"] == "Breast cancer"]
    split_of = dict(zip(rows["path"].map(lambda p: Path(p).name), rows["split"], strict=True))
    assert [split_of[n] for n in names] == ["train"] * 18 + ["val"] + ["test"]


def test_group_mode_keeps_patients_together_and_is_close(make_raw_dir, data_params, split_params):
    raw = make_raw_dir(SEED_TOTALS, views=(1, 3))
    result = make_split(*sections(data_params, split_params), root=raw.parents[1], progress=False)
    images = result.images
    assert images.groupby("patient")["split"].nunique().max() == 1
    assert result.summary["patients"]["in_several_splits"] == 0
    for s, name in enumerate(SPLITS):
        for cls, total in {"No cancer": 424, "Breast cancer": 371, "Prostate cancer": 398}.items():
            target = split_counts(total, (0.9, 0.05, 0.05))[s]
            assert abs(result.summary[name][cls] - target) <= 1, (name, cls)


def test_group_split_finds_an_exact_packing():
    # one class, targets 6 / 2 / 2; groups of 3, 3, 2, 1, 1: a perfect fit exists
    groups = np.repeat(np.arange(5), [3, 3, 2, 1, 1])
    images = pd.DataFrame({"label": np.zeros(len(groups), dtype=int)})
    for seed in range(10):
        assigned = group_split(images, groups, np.array([[6, 2, 2]]), seed)
        counts = pd.Series(assigned).value_counts().to_dict()
        assert counts == {"train": 6, "val": 2, "test": 2}, seed


def test_group_split_handles_multi_class_groups():
    # a patient with images in both classes moves as one unit
    groups = np.array([0, 0, 1, 2, 3, 4, 5])
    labels = np.array([0, 1, 0, 0, 1, 1, 1])
    images = pd.DataFrame({"label": labels})
    assigned = group_split(images, groups, np.array([[2, 1, 0], [3, 0, 1]]), seed=3)
    assert assigned[0] == assigned[1]
    table = pd.crosstab(labels, assigned).reindex(columns=list(SPLITS), fill_value=0)
    assert table.to_numpy().tolist() == [[2, 1, 0], [3, 0, 1]]


def test_split_is_deterministic_by_seed(make_raw_dir, data_params, split_params, tmp_path):
    raw = make_raw_dir({"No cancer": 60, "breast cancer": 50, "prostate cancer": 40}, views=(1, 3))
    root = raw.parents[1]
    for mode in ("group", "image"):
        split_params["mode"] = mode
        first = make_split(*sections(data_params, split_params), root=root, progress=False)
        again = make_split(*sections(data_params, split_params), root=root, progress=False)
        other = make_split(
            *sections(data_params, {**split_params, "seed": 7}), root=root, progress=False
        )
        assert first.images["split"].tolist() == again.images["split"].tolist()
        assert first.images["split"].tolist() != other.images["split"].tolist()
        for name in SPLITS:
            pd.testing.assert_frame_equal(first.manifest(name), again.manifest(name))


@pytest.mark.parametrize("mode", ["group", "image"])
def test_duplicates_never_straddle_and_cross_class_are_dropped(
    make_raw_dir, data_params, split_params, mode
):
    raw = make_raw_dir({"No cancer": 40, "breast cancer": 40, "prostate cancer": 40})
    source = raw / "No cancer" / "pt-00001_v1.png"
    for k in range(6):  # six same-class copies under other patient names
        shutil.copy(source, raw / "No cancer" / f"copy-{k}_v1.png")
    shutil.copy(raw / "breast cancer" / "pt-00041_v1.png", raw / "prostate cancer" / "x_v1.png")
    split_params["mode"] = mode
    result = make_split(*sections(data_params, split_params), root=raw.parents[1], progress=False)
    copies = result.images[result.images["sha256"] == result.images["sha256"].iloc[0]]
    assert len(copies) == 7 and copies["split"].nunique() == 1
    assert result.report["duplicate_groups"][0]["paths"][0] == "data/raw/No cancer/copy-0_v1.png"
    assert result.report["duplicate_groups"][0]["split"] == copies["split"].iloc[0]
    crossed = result.report["cross_class_duplicates"]
    assert [group["paths"] for group in crossed] == [
        ["data/raw/breast cancer/pt-00041_v1.png", "data/raw/prostate cancer/x_v1.png"]
    ]
    assert "left out" in crossed[0]["error"]
    assert not result.images["path"].isin(crossed[0]["paths"]).any()
    assert result.summary["files"]["cross_class_duplicate_files"] == 2
    # same-class groups only (the cross-class group is counted above): one group, 7 files
    assert result.summary["files"]["duplicate_groups"] == 1
    assert result.summary["files"]["duplicate_files"] == 7


def test_outputs_report_and_numeric_summary(make_raw_dir, data_params, split_params, tmp_path):
    raw = make_raw_dir({"No cancer": 30, "breast cancer": 30, "prostate cancer": 30})
    (raw / "No cancer" / "broken_v1.png").write_text("oops")
    (raw / "CT scans").mkdir()
    unique_png(raw / "CT scans" / "y_v1.png", 999)
    unique_png(raw / "prostate cancer" / "IMG 5.png", 998)
    split_stage(stage_params(data_params, split_params), root=tmp_path, progress=False)
    out = tmp_path / "data" / "split"
    assert sorted(p.name for p in out.iterdir()) == [
        "index.csv",
        "report.json",
        "summary.json",
        "test.csv",
        "train.csv",
        "val.csv",
    ]  # no temporary files left behind
    report = json.loads((out / "report.json").read_text())
    assert report["bad_files"] == [
        {
            "path": "data/raw/No cancer/broken_v1.png",
            "class": "No cancer",
            "reason": "not an image (unknown format)",
        }
    ]
    assert report["ignored_folders"][0]["folder"] == "data/raw/CT scans"
    assert report["unmatched_patient_names"] == ["data/raw/prostate cancer/IMG 5.png"]
    assert report["raw_dir"] == "data/raw"
    assert report["targets"]["train"] == {
        "No cancer": 27,
        "Breast cancer": 27,
        "Prostate cancer": 27,
    }

    def leaves(node):
        return [x for v in node.values() for x in leaves(v)] if isinstance(node, dict) else [node]

    summary = json.loads((out / "summary.json").read_text())
    assert all(isinstance(v, int) for v in leaves(summary))
    assert summary["files"]["bad"] == 1 and summary["files"]["ignored_folders"] == 1
    assert summary["total"]["total"] == 91
    rows = sum(len(pd.read_csv(out / f"{s}.csv")) for s in SPLITS)
    assert rows == 91


def test_stage_runs_from_the_repo_root_and_fails_clearly(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, capsys
):
    make_raw_dir({"No cancer": 20, "breast cancer": 20, "prostate cancer": 20})
    params = write_params(tmp_path, data_params, split_params)
    monkeypatch.chdir(tmp_path)
    stage = load_script("stages/split.py")
    assert stage.main(["--params", str(params), "--no-progress"]) == 0
    assert (tmp_path / "data/split/train.csv").is_file()
    shutil.rmtree(tmp_path / "data/raw/breast cancer")
    assert stage.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "class 'Breast cancer' has no usable image" in err
    assert "breast cancer (folder missing)" in err


def test_make_split_raises_data_error_for_an_empty_class(make_raw_dir, data_params, split_params):
    raw = make_raw_dir({"No cancer": 5, "prostate cancer": 5})
    with pytest.raises(DataError, match="class 'Breast cancer' has no usable image"):
        make_split(*sections(data_params, split_params), root=raw.parents[1], progress=False)


def test_bad_mode_is_refused(split_params):
    with pytest.raises(ParamsError, match="split.mode = 'patient': input should be"):
        section("split", {**split_params, "mode": "patient"})


def test_stage_help():
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "split.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--params" in done.stdout and "report.json" in done.stdout
