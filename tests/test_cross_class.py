"""An image reachable from two classes (a symbolic link, a hard link, a copy, a folder link)
is a cross-class duplicate: every path to it is left out and reported, whatever the order
in which the class folders are listed."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import unique_png

from petscan.data.split import make_split
from petscan.params.schema import section
from petscan.pipeline.split import describe

FIRST, LAST = "No cancer", "prostate cancer"  # the first and last class folders by name
PLACE = {
    "symlink": lambda target, link: os.symlink(target, link),
    "relative-symlink": lambda target, link: os.symlink(os.path.relpath(target, link.parent), link),
    "hardlink": os.link,
    "copy": shutil.copyfile,
}


def counts(result) -> dict[str, int]:
    return result.images["class"].value_counts().to_dict()


@pytest.mark.parametrize("kind", sorted(PLACE))
@pytest.mark.parametrize("link_in", [FIRST, LAST], ids=["link-sorted-first", "link-sorted-last"])
def test_an_image_reached_from_two_classes_is_left_out(
    make_raw_dir, data_params, split_params, kind, link_in
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    image_in = LAST if link_in == FIRST else FIRST
    target = sorted((raw / image_in).iterdir())[3]
    link = raw / link_in / "zz-relabel_v1.png"
    PLACE[kind](target, link)
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
    paths = set(result.images["path"])
    rel = {p.relative_to(raw.parents[1]).as_posix() for p in (target, link)}
    assert not rel & paths, "neither path is used"
    lost = "No cancer" if image_in == FIRST else "Prostate cancer"  # the image's own class
    assert counts(result) == {"Breast cancer": 10, "Prostate cancer": 10, "No cancer": 10, lost: 9}
    [group] = result.report["cross_class_duplicates"]
    assert group["paths"] == sorted(rel)
    assert group["classes"] == ["No cancer", "Prostate cancer"]
    assert group["error"].startswith("the same image under several classes")
    assert result.summary["files"]["cross_class_duplicate_files"] == 2
    assert result.report["link_notes"] == [], "nothing 'counted once' across classes"
    console = "\n".join(describe(result))
    assert "2 cross-class duplicates" in console
    assert f"cross-class duplicate (No cancer, Prostate cancer): {', '.join(sorted(rel))}" in (
        console
    )


@pytest.mark.parametrize("link_in", [FIRST, LAST], ids=["link-sorted-first", "link-sorted-last"])
def test_a_folder_link_into_another_class_leaves_its_images_out(
    make_raw_dir, data_params, split_params, link_in
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    other = LAST if link_in == FIRST else FIRST
    sub = raw / other / "sub"
    for k in range(3):
        unique_png(sub / f"pt-9000{k}_v1.png", 9000 + k)
    os.symlink(sub, raw / link_in / "borrowed")
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
    assert counts(result) == {"No cancer": 10, "Breast cancer": 10, "Prostate cancer": 10}
    crossed = result.report["cross_class_duplicates"]
    assert len(crossed) == 3 and all(len(group["paths"]) == 2 for group in crossed)
    assert not set(result.images["path"]) & {p for g in crossed for p in g["paths"]}
    [note] = result.report["link_notes"]
    assert note["path"] == f"data/raw/{link_in}/borrowed"
    assert note["reason"] == "symbolic link into another class's folder: followed"


def test_one_outside_folder_linked_from_two_classes(
    make_raw_dir, data_params, split_params, tmp_path
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    outside = tmp_path / "nas"
    unique_png(outside / "ext-1_v1.png", 777)
    os.symlink(outside, raw / FIRST / "nas")
    os.symlink(outside, raw / LAST / "nas")
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
    [group] = result.report["cross_class_duplicates"]
    assert group["paths"] == [
        f"data/raw/{FIRST}/nas/ext-1_v1.png",
        f"data/raw/{LAST}/nas/ext-1_v1.png",
    ]
    assert result.summary["total"]["total"] == 30


def test_two_folders_of_one_class_still_count_a_linked_file_once(
    make_raw_dir, data_params, split_params
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    (raw / "normal").mkdir()
    target = sorted((raw / FIRST).iterdir())[0]
    os.symlink(target, raw / "normal" / "same_v1.png")
    data_params["classes"]["normal"] = "No cancer"  # a second folder of the same class
    result = make_split(
        section("data", data_params),
        section("split", split_params),
        root=raw.parents[1],
        progress=False,
    )
    assert result.report["cross_class_duplicates"] == []
    assert counts(result)["No cancer"] == 10
    [note] = result.report["link_notes"]
    assert note["reason"].endswith("counted once")
