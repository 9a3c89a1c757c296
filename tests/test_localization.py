"""Localization against the generator's lesions: masks, hits, energy, reference maps,
bootstrap summary, gallery choice, and the explain stage on a tiny generated data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petscan.evaluation import localization as loc
from petscan.evaluation.gallery import gallery_selection
from petscan.handoff import records, results
from petscan.params.loading import StageParams
from petscan.params.schema import validate
from petscan.pipeline.explain import SECTIONS, explain


def lesion(col, row, radius, px_per_mm=0.5, visible=True, path="x/a.png") -> dict:
    return {
        "path": path,
        "col": col,
        "row": row,
        "radius_col": radius,
        "radius_row": radius,
        "px_per_mm_col": px_per_mm,
        "px_per_mm_row": px_per_mm,
        "visible": visible,
    }


def test_mask_is_the_fwhm_ellipse_widened_by_the_tolerance():
    lesions = pd.DataFrame([lesion(10, 20, 2.0)])  # 4 mm at 0.5 px/mm: radius 2 + 2 = 4 px
    mask = loc.lesion_mask((40, 30), lesions, tolerance_mm=4.0)
    assert mask[20, 14] and mask[24, 10] and not mask[20, 15] and not mask[25, 10]
    assert mask.sum() == 49  # lattice points in a disc of radius 4
    anisotropic = pd.DataFrame([{**lesion(10, 20, 2.0), "radius_row": 6.0}])
    mask = loc.lesion_mask((40, 30), anisotropic, tolerance_mm=0.0)
    assert mask[26, 10] and not mask[20, 13]


def test_scores_hit_and_energy_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    heat = np.zeros((10, 10), np.float32)
    heat[3, 3], heat[8, 8] = 1.0, 0.5
    assert loc.scores(heat, mask) == (True, pytest.approx(1.0 / 1.5))
    heat[8, 8] = 2.0
    assert loc.scores(heat, mask) == (False, pytest.approx(1.0 / 3.0))
    assert loc.scores(np.zeros((10, 10)), mask) == (False, 0.0)  # no evidence: a miss


def test_centre_prior_peaks_at_the_body_centroid():
    rgb = np.full((100, 60, 3), 255, np.uint8)
    rgb[20:80, 10:30] = 120  # the "body": rows 20..79, cols 10..29
    prior = loc.centre_prior(rgb)
    row, col = np.unravel_index(int(np.argmax(prior)), prior.shape)
    assert (row, col) in [(49, 19), (49, 20), (50, 19), (50, 20)]  # centroid (49.5, 19.5)
    assert prior[49, 19] > prior[20, 19] > prior[5, 50]


def test_random_map_has_the_feature_grid_resolution():
    rng = np.random.default_rng(0)
    values = loc.random_map(rng, (64, 32), (4, 4), (32, 32), "stretch")
    assert values.shape == (64, 32)
    assert values.min() >= 0 and values.max() <= 1
    # 4 x 4 cells: a 2 x 2 block at each cell centre holds the cell's own value
    again = np.random.default_rng(0).random((4, 4))
    assert values[7, 3] == pytest.approx(again[0, 0], abs=0.1)


def test_summary_means_intervals_and_paired_differences():
    frame = pd.DataFrame(
        {
            "patient": ["p1", "p1", "p2", "p3", "p4"],
            "model_hit": [1, 1, 0, 1, 0],
            "model_energy": [0.5, 0.4, 0.1, 0.3, 0.2],
            "centre_prior_hit": [0, 0, 0, 1, 0],
            "centre_prior_energy": [0.1, 0.1, 0.1, 0.2, 0.1],
            "random_hit": [0, 1, 0, 0, 0],
            "random_energy": [0.05] * 5,
            "lesion_area": [0.01] * 5,
            "model_empty": [False, False, True, False, False],
        }
    )
    out = loc.summarize(frame, n_resamples=300, confidence=0.9, seed=0)
    assert out["model/empty_heatmaps"] == pytest.approx(0.2)
    assert out["images"] == 5 and out["patients"] == 4
    assert out["model/pointing_game"] == pytest.approx(0.6)
    assert out["model/energy_inside"] == pytest.approx(0.3)
    assert out["model_minus_centre_prior/pointing_game"] == pytest.approx(0.4)
    assert out["model_minus_random/energy_inside"] == pytest.approx(0.25)
    assert out["model/pointing_game_ci_low"] <= 0.6 <= out["model/pointing_game_ci_high"]
    assert out["model/pointing_game_ci_low"] >= 0.0 and out["model/pointing_game_ci_high"] <= 1
    assert out["random/energy_inside_ci_low"] == pytest.approx(0.05)  # no spread, no interval


def test_gallery_selection_per_class_and_slot():
    frame = pd.DataFrame(
        {
            "path": list("abcdefg"),
            "true_class": ["A", "A", "A", "A", "B", "B", "B"],
            "predicted_class": ["A", "A", "B", "A", "A", "A", "A"],
            "confidence": [0.9, 0.6, 0.7, 0.8, 0.55, 0.95, 0.5],
        }
    )
    chosen = {(c, o, e): i for c, o, e, i in gallery_selection(frame, ["A", "B"])}
    assert chosen[("A", "correct", "high")] == 0 and chosen[("A", "correct", "low")] == 1
    assert chosen[("A", "wrong", "high")] == 2 and chosen[("A", "wrong", "low")] is None
    assert chosen[("B", "correct", "high")] is None and chosen[("B", "correct", "low")] is None
    assert chosen[("B", "wrong", "high")] == 5 and chosen[("B", "wrong", "low")] == 6


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> tuple[Path, StageParams]:
    """A generated data set, manifests, a saved tiny-backbone model and its train.json."""
    from conftest import CLASS_NAMES, CLASSES, random_weights, tiny_model_params

    from petscan.demo import generate
    from petscan.model import network
    from petscan.utils import io

    root = tmp_path_factory.mktemp("explain")
    counts = {"No cancer": 4, "breast cancer": 6, "prostate cancer": 6}
    frame = generate.generate(
        root / "data/raw", counts, seed=3, base_height=72, workers=1, progress=False
    )
    frame["path"] = [Path(p).relative_to(root).as_posix() for p in frame["path"]]
    frame["class"] = frame["folder"].map(CLASSES)
    frame["label"] = frame["class"].map(CLASS_NAMES.index)
    patients = sorted(frame["patient"].unique())
    (root / "split").mkdir()
    for split, part in (("val", patients[::2]), ("test", patients[1::2])):
        rows = frame[frame["patient"].isin(part)][["path", "class", "label", "patient"]]
        rows.to_csv(root / "split" / f"{split}.csv", index=False)
    params = tiny_model_params(resize="pad")
    (root / "models").mkdir()
    network.build_full_model(params, 3, None).save(root / "models/model.keras")
    info = records.TrainInfo(
        mode="cached",
        weights=random_weights(),
        class_names=CLASS_NAMES,
        seed=0,
        best_epoch=0,
        epochs_run=1,
        stopped_early=False,
        model_sha256=io.sha256_file(root / "models/model.keras"),
    )
    records.write_train_info(root / "models", info)
    raw = {
        "explain": {
            "method": "gradcam",
            "splits": ["val", "test"],
            "tolerance_mm": 15,
            "batch_size": 4,
            "seed": 1,
            "out_dir": "reports/explain",
        },
        "data": {"classes": CLASSES, "raw_dir": "data/raw"},
        "model": {"resize": "pad"},
        "evaluate": {"bootstrap_resamples": 50, "confidence": 0.95},
        # no run has this model: explain finds none and logs nothing (a store of its own)
        "mlflow": {"experiment": "explain", "tracking_uri": f"sqlite:///{root}/mlflow.db"},
        "train": {"out_dir": "models"},
        "split": {"out_dir": "split"},
    }
    return root, StageParams(validate(raw), SECTIONS)


def test_stage_scores_every_image_with_a_visible_lesion(tiny_project):
    root, params = tiny_project
    result = explain(params, root)
    out = root / "reports/explain"
    table = pd.read_csv(out / "localization.csv")
    assert len(table) == 16  # every val and test image
    lesions = pd.read_csv(root / "data/raw/.lesions.csv")
    seen = {loc.file_key(p) for p in lesions.loc[lesions.visible, "path"]}
    scored = table.dropna(subset=["model_hit"])
    assert {loc.file_key(p) for p in scored["path"]} == seen
    summary = json.loads((out / "metrics_full.json").read_text())
    assert summary == json.loads(json.dumps(result))
    assert summary["random_init"] is True and summary["skipped"] is None
    headline = json.loads((out / "metrics.json").read_text())  # the DVC metric: point values
    assert headline["localization"] == {k: summary["localization"][k] for k in loc.HEADLINE}
    local = summary["localization"]
    assert local["images"] == len(scored)
    assert local["model/empty_heatmaps"] == pytest.approx(scored["model_empty"].mean())
    assert local["model/pointing_game"] == pytest.approx(scored["model_hit"].mean())
    assert local["centre_prior/energy_inside"] == pytest.approx(
        scored["centre_prior_energy"].mean()
    )
    gallery = pd.read_csv(out / "gallery" / results.GALLERY_FILE)
    assert len(gallery) == 12  # 3 classes x 4 slots
    for panel in gallery["panel"].dropna():
        assert (out / "gallery" / panel).is_file()
    assert set(gallery.dropna(subset=["panel"])["path"]) <= set(
        table.loc[table.split == "test", "path"]
    )


def test_stage_without_ground_truth_skips_with_the_reason(tiny_project, tmp_path):
    import shutil

    root, params = tiny_project
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "data/raw/.lesions.csv").unlink()
    result = explain(params, copy)
    assert result["localization"] is None
    assert ".lesions.csv is missing" in result["skipped"]
    saved = json.loads((copy / "reports/explain/metrics.json").read_text())
    assert saved["skipped"] == result["skipped"]
    assert (copy / "reports/explain/gallery" / results.GALLERY_FILE).is_file()


def test_gallery_figure_has_the_banner_and_every_slot(tiny_project, tmp_path):
    from conftest import CLASS_NAMES, figure_texts

    from petscan.evaluation import plots

    root, params = tiny_project
    explain(params, root)
    panels = root / "reports/explain/gallery"
    gallery = pd.read_csv(panels / results.GALLERY_FILE)
    fig = plots.explanation_gallery(
        gallery, panels, CLASS_NAMES, tmp_path / "g.png", banner="RANDOM-INIT backbone"
    )
    texts = figure_texts(fig)
    assert "RANDOM-INIT backbone" in texts
    assert {"correct, most confident", "wrong, least confident"} <= set(texts)
    assert texts.count("no such image") == int(gallery["panel"].isna().sum())
    assert (tmp_path / "g.png").stat().st_size > 0


def test_stage_logs_its_params_and_metrics_into_the_training_run(
    tiny_project, tmp_path, mlflow_store
):
    import mlflow

    from petscan.tracking import runs

    root, params = tiny_project
    raw = params.as_dict()  # the same params, with a store of this test's own
    raw["mlflow"] = {"experiment": "explain", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    params = StageParams(validate(raw), SECTIONS)
    sha256 = records.read_train_info(root / "models").model_sha256
    with runs.start_training_run(params.mlflow, {"train": {"out_dir": "models"}}, {}) as run:
        mlflow.set_tag("model_sha256", sha256)
    result = explain(params, root)
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.params["explain.method"] == "gradcam"
    assert logged.data.params["explain.tolerance_mm"] == "15.0"
    assert logged.data.params["evaluate.bootstrap_resamples"] == "50"
    images = result["localization"]["images"]
    assert logged.data.metrics["explain/images"] == images
    assert logged.data.tags["explain.localization"] == '["val", "test"]'
