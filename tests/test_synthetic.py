"""The synthetic PET generator (`petscan.demo`): exact counts, names, formats, determinism,
anatomy, lesions and their visibility."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from petscan.data.folders import list_images
from petscan.data.images import load_rgb
from petscan.demo import generate as synthetic
from petscan.demo import rendering, truth
from petscan.demo.anatomy import Anatomy
from petscan.demo.shapes import ellipse, gauss
from petscan.handoff import ground_truth
from petscan.params.loading import load_section
from petscan.params.schema import section
from petscan.utils.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"No cancer": 5, "breast cancer": 4, "prostate cancer": 6}
MEDIUM = {"No cancer": 40, "breast cancer": 30, "prostate cancer": 30}


def patient_regex() -> re.Pattern:
    return re.compile(load_section("data", ROOT / "params.yaml").patient_pattern)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "raw"
    frame = synthetic.generate(out, TINY, seed=11, base_height=80, workers=1, progress=False)
    return out, frame


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    out = tmp_path_factory.mktemp("medium") / "raw"
    frame = synthetic.generate(out, MEDIUM, seed=5, base_height=96, workers=2, progress=False)
    return out, frame


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in list_images(folder)}


def test_same_params_give_byte_identical_files_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    again = synthetic.generate(
        tmp_path / "raw", TINY, seed=11, base_height=80, workers=2, progress=False
    )
    assert len(again) == 15
    assert file_bytes(tmp_path / "raw") == file_bytes(out)
    expected = (out / ground_truth.TRUTH_FILE).read_text().replace(str(out), "OUT")
    assert (tmp_path / "raw" / ground_truth.TRUTH_FILE).read_text().replace(
        str(tmp_path / "raw"), "OUT"
    ) == expected


def test_another_seed_gives_other_images(tiny, tmp_path):
    out, _ = tiny
    synthetic.generate(tmp_path / "raw", TINY, seed=12, base_height=80, workers=1, progress=False)
    assert file_bytes(tmp_path / "raw") != file_bytes(out)


def test_exact_counts_per_folder(tiny):
    out, frame = tiny
    assert {folder: len(list_images(out / folder)) for folder in TINY} == TINY
    assert frame.groupby("folder").size().to_dict() == TINY
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(TINY)
    assert (out / ground_truth.TRUTH_FILE).is_file()
    assert not list(out.parent.glob(".raw.tmp-*"))  # the temporary folder is gone


def test_file_names_carry_a_neutral_unique_patient_id(medium):
    out, frame = medium
    regex = patient_regex()
    owner: dict[str, str] = {}
    for path in list_images(out):
        assert re.fullmatch(r"pet-\d{5}_v[1-3]\.(png|jpg)", path.name), path.name
        patient = regex.match(path.stem).group("patient")
        assert owner.setdefault(patient, path.parent.name) == path.parent.name  # one class each
    views = frame.groupby("patient")["view"].agg(["count", "min", "max"])
    assert views["count"].between(1, 3).all()
    assert (views["min"] == 1).all() and (views["max"] == views["count"]).all()
    assert len(owner) == frame["patient"].nunique() == len(views)
    assert (frame["path"].map(lambda p: Path(p).exists())).all()


def test_plan_is_exact_and_ids_do_not_follow_the_class():
    plans = synthetic.plan_patients(
        {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}, 2024
    )
    totals: dict[str, int] = {}
    for plan in plans:
        totals[plan.folder] = totals.get(plan.folder, 0) + plan.views
        assert 1 <= plan.views <= 3
    assert totals == {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}
    ids = [p.patient for p in plans]
    assert len(set(ids)) == len(ids)
    first_breast = [p.patient for p in plans if p.kind == truth.BREAST][:20]
    assert first_breast != sorted(first_breast) or first_breast[0] != "pet-00001"
    assert synthetic.plan_patients({"No cancer": 424}, 2024) == synthetic.plan_patients(
        {"No cancer": 424}, 2024
    )


def test_fixed_views_per_patient_and_bad_settings():
    plans = synthetic.plan_patients({"No cancer": 7}, 0, images_per_patient=(2, 2))
    assert [p.views for p in plans] == [2, 2, 2, 1]  # the last patient takes what is left
    with pytest.raises(ParamsError, match=r"synthetic\.images_per_patient\[0\] = 0"):
        section("synthetic", {"images_per_patient": [0, 2]})  # checked once, by the schema
    with pytest.raises(ParamsError, match="min <= max"):
        section("synthetic", {"images_per_patient": [3, 2]})
    with pytest.raises(ParamsError, match=r"synthetic\.counts"):
        section("synthetic", {"counts": {"No cancer": -1}})
    with pytest.raises(ValueError, match="params.yaml"):
        synthetic.plan_patients({"lung cancer": 3}, 0)
    assert synthetic.scaled_counts({"a": 424, "b": 371}, 2) == {"a": 848, "b": 742}
    assert synthetic.scaled_counts({"a": 3}, 0.5) == {"a": 2}  # round half to even


def test_formats_include_rgba_16_bit_and_jpeg(medium):
    out, frame = medium
    modes: dict[str, int] = {}
    for path in list_images(out):
        with Image.open(path) as image:
            key = f"{image.format}:{image.mode}"
        modes[key] = modes.get(key, 0) + 1
    assert modes.get("PNG:RGBA", 0) >= 1
    assert modes.get("PNG:I;16", 0) + modes.get("PNG:I", 0) >= 1
    assert modes.get("JPEG:L", 0) + modes.get("JPEG:RGB", 0) >= 1
    majority = modes.get("PNG:L", 0) + modes.get("PNG:RGB", 0)
    assert majority > sum(modes.values()) / 2  # most files are 8-bit grey or RGB PNG
    sizes = {Image.open(p).size for p in list_images(out)}
    assert len(sizes) > len(frame) // 2  # sizes and aspect ratios vary
    aspects = [w / h for w, h in sizes]
    assert 0.3 < min(aspects) < max(aspects) < 1.0


def test_every_file_loads_white_background_head_at_top(medium):
    out, frame = medium
    for path in list_images(out):
        grey = load_rgb(path)[..., 0].astype(float)
        h, w = grey.shape
        assert np.median(grey) > 200, path  # mostly white: background and light soft tissue
        assert (grey >= 240).mean() > 0.1, path  # a real white background
        darkness = 255 - grey
        column = np.convolve(darkness[: h // 4].mean(axis=0), np.ones(5) / 5, mode="same")
        assert 0.3 * w <= np.argmax(column) <= 0.7 * w, path  # head (or neck) centred on top
        assert darkness[: h // 4, int(0.35 * w) : int(0.65 * w)].mean() > darkness[:, :3].mean()
    arms_down = frame[frame["arms"] == "down"]
    for path in arms_down["path"]:
        grey = load_rgb(path)[..., 0]
        k = max(2, grey.shape[0] // 40)
        assert grey[:k, :k].mean() > 245 and grey[:k, -k:].mean() > 245, path


def test_sex_follows_the_class_and_no_cancer_has_both(medium):
    _, frame = medium
    sex = frame.groupby("folder")["sex"].agg(set).to_dict()
    assert sex["breast cancer"] == {"F"}
    assert sex["prostate cancer"] == {"M"}
    assert sex["No cancer"] == {"F", "M"}
    assert frame.loc[frame.folder == "No cancer", "primary_suv"].isna().all()
    assert frame.loc[frame.folder != "No cancer", "primary_suv"].notna().all()


def test_lesion_sits_where_the_truth_says(medium):
    """A large, hot lesion is darker than the body around it at the recorded pixel."""
    _, frame = medium
    hot = frame[
        (frame.primary_suv > 5) & (frame.primary_diam_mm > 12) & (frame.folder == "breast cancer")
    ]
    assert len(hot) >= 3
    for row in hot.itertuples():
        grey = load_rgb(row.path)[..., 0].astype(float)
        r, c = int(row.primary_row), int(row.primary_col)
        body = grey[grey < 250]
        assert grey[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].min() < np.median(body), row.path
    breast = frame[frame.folder == "breast cancer"]
    height, width = breast["height"], breast["width"]
    assert (breast.primary_row.between(0.25 * height, 0.6 * height)).all()  # chest level
    assert (breast.primary_col.between(0, width)).all()


def test_lesions_file_records_every_lesion_in_file_pixels(medium):
    out, frame = medium
    lesions = pd.read_csv(out / ground_truth.LESIONS_FILE)
    assert list(lesions.columns) == list(ground_truth.LESION_COLUMNS)
    cancer = frame[frame.folder != "No cancer"]
    assert set(lesions.path) == set(cancer.path)  # every cancer file, no other
    counts = lesions.groupby("path").size()
    for row in cancer.itertuples():  # the primary plus every node and metastasis
        nodes = row.axillary_nodes if row.folder == "breast cancer" else row.pelvic_nodes
        extra = np.nansum([nodes, row.bone_mets, getattr(row, "liver_mets", 0), row.lung_mets])
        assert counts[row.path] >= 1 + extra
    primary = lesions[lesions.kind == "primary"].set_index("path").loc[cancer.path]
    # the same place as .ground_truth.csv's primary (which rounds a pixel-corner estimate)
    assert np.abs(primary.col.to_numpy() - cancer.primary_col.to_numpy()).max() <= 1.5
    assert np.abs(primary.row.to_numpy() - cancer.primary_row.to_numpy()).max() <= 1.5
    assert (lesions.visible == (lesions.contrast >= rendering.DEFAULT_VISIBLE_CONTRAST)).all()
    assert 0.3 < lesions.visible.mean() < 1.0  # some hidden, most seen


def test_visibility_threshold_changes_the_lesions_file_only(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "raw"
    synthetic.generate(
        again, TINY, seed=11, base_height=80, workers=1, progress=False, visible_contrast=0.5
    )
    assert file_bytes(again) == file_bytes(out)
    before = pd.read_csv(out / ground_truth.LESIONS_FILE)
    after = pd.read_csv(again / ground_truth.LESIONS_FILE)
    pd.testing.assert_series_equal(before.contrast, after.contrast)
    assert (after.visible == (after.contrast >= 0.5)).all()
    assert before.visible.sum() > after.visible.sum()


def constructed_case() -> tuple[Anatomy, rendering.ViewSpec]:
    """No body, a hot organ with a lesion in front of it, a faint and a clear lesion.

    400 x 200 px for anatomy rows 0..1 (1.02 x): u = 392.16 px per unit, 1100 mm per unit.
    """
    diam = 30.0
    sigma = truth.lesion_sigma(diam, 1100.0)
    organ = ellipse(0.1, 0.5, 0.0, 0.08, 0.08, 20.0)
    hidden = gauss(0.1, 0.5, 0.05, sigma, 4.0)
    faint = gauss(-0.15, 0.7, 0.0, sigma, 0.5)
    clear = gauss(-0.15, 0.3, 0.0, sigma, 6.0)
    anatomy = Anatomy(
        outline=[],
        lungs=[],
        uptake=[organ, hidden, faint, clear],
        background=0.0,
        lung_factor=1.0,
        half_width=0.25,
        truth={},
        scanner={"mm_per_unit": 1100.0},
        lesions=[
            truth.Lesion(kind, blob, diam)
            for kind, blob in (("primary", hidden), ("bone_met", faint), ("liver_met", clear))
        ],
    )
    view = rendering.ViewSpec(
        height=400, width=200, upsample=1.0, stretch=1.0, angle_deg=0.0, tilt_deg=0.0,
        y_top=0.0, y_bottom=1.0, shift=0.0, counts=1e6, window=8.0, gamma=1.0, fwhm_mm=8.0,
        fmt="png-grey", quality=90,
    )  # fmt: skip
    return anatomy, view


def test_visibility_flag_on_a_constructed_case():
    anatomy, view = constructed_case()
    rng = np.random.default_rng(0)
    _, _, records = rendering.render(rng, anatomy, view, visible_contrast=0.1)
    hidden, faint, clear = records
    u = 400 / 1.02
    # clear: centre col = 100 - 0.15 u, row = 0.01 * 400 + 0.3 u (pixel centres, no resampling)
    assert clear["col"] == pytest.approx(100 - 0.15 * u, abs=0.05)
    assert clear["row"] == pytest.approx(4 + 0.3 * u, abs=0.05)
    assert clear["radius_col"] == pytest.approx(15 * u / 1100, abs=0.01)  # half of 30 mm
    # A Gaussian of sigma s blurred by sigma b peaks at s^2 / (s^2 + b^2) of its value;
    # with no background, the display change is that peak / window (gamma 1).
    s2, b2 = (30 / 2.355) ** 2, (8 / 2.355) ** 2
    assert clear["contrast"] == pytest.approx(6 * s2 / (s2 + b2) / 8, abs=0.01)
    assert clear["visible"] and clear["in_view"]
    assert faint["contrast"] == pytest.approx(0.5 * s2 / (s2 + b2) / 8, abs=0.005)
    assert not faint["visible"]  # 0.058 < 0.1
    assert hidden["contrast"] == pytest.approx(0.0, abs=1e-6)  # behind the SUV-20 organ
    assert not hidden["visible"] and hidden["in_view"]


def test_lesion_records_leave_the_image_unchanged():
    anatomy, view = constructed_case()
    with_records, _, _ = rendering.render(np.random.default_rng(3), anatomy, view)
    anatomy.lesions = []  # drawn as ordinary uptake, in list order
    plain, _, records = rendering.render(np.random.default_rng(3), anatomy, view)
    assert records == []
    np.testing.assert_array_equal(with_records, plain)


def test_encode_round_trips_every_format(tmp_path):
    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    expected = {
        "png-grey": "L",
        "png-rgb": "RGB",
        "png-rgba": "RGBA",
        "png-grey16": "I;16",
        "jpeg-grey": "L",
        "jpeg-rgb": "RGB",
    }
    assert [fmt for fmt, _ in rendering.FORMATS] == list(expected)
    for fmt, mode in expected.items():
        data, ext = rendering.encode(grey, fmt, quality=95)
        path = tmp_path / f"x-{fmt}{ext}"
        path.write_bytes(data)
        assert ext == (".jpg" if fmt.startswith("jpeg") else ".png")
        with Image.open(path) as image:
            assert image.mode == mode
        rgb = load_rgb(path).astype(int)
        error = np.abs(rgb - grey[:, :, None].astype(int)).max()
        assert error <= (12 if fmt.startswith("jpeg") else 0), fmt  # PNG is lossless
    with pytest.raises(ValueError, match="unknown image format"):
        rendering.encode(grey, "tiff")


def test_main_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        "synthetic:\n  out_dir: data/raw\n  seed: 3\n"
        "  counts: {No cancer: 2, breast cancer: 2, prostate cancer: 2}\n"
        "  images_per_patient: [1, 3]\n  base_height: 64\n"
    )
    out = tmp_path / "raw"
    args = ["--params", str(params), "--out", str(out), "--workers", "1", "--quiet"]
    assert synthetic.main(args) == 0
    assert len(list_images(out)) == 6
    assert "wrote 6 images" in capsys.readouterr().out
    assert synthetic.main(args) == 1
    assert "--force" in capsys.readouterr().err
    before = {p: p.stat().st_mtime_ns for p in list_images(out)}
    assert synthetic.main([*args, "--if-missing"]) == 0  # what `make data` runs
    assert "exists: not generating" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in list_images(out)} == before
    assert synthetic.main([*args, "--force", "--scale", "2", "--seed", "4"]) == 0
    assert {f: len(list_images(out / f)) for f in ("No cancer", "breast cancer")} == {
        "No cancer": 4,
        "breast cancer": 4,
    }
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
