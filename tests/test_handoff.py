"""`handoff`: the files passed between stages, read back exactly as written."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import manifest_row, random_weights, write_manifest

from petscan.handoff import records, results
from petscan.handoff.results import COMPACT_METRICS, compact_metrics
from petscan.utils.errors import BadInputError, MissingInputError


def test_weights_info_round_trips_through_weights_json(tmp_path):
    info = random_weights("ab" * 32)
    records.write_weights_meta(tmp_path, info, {"size_bytes": 12, "random_init": False})
    on_disk = json.loads((tmp_path / "weights.json").read_text())
    # the WeightsInfo fields come first and win over same-named details
    assert list(on_disk)[:5] == list(records.WEIGHTS_FIELDS) and on_disk["size_bytes"] == 12
    assert on_disk["random_init"] is True
    assert records.read_weights_info(tmp_path) == info


def test_weights_json_missing_or_incomplete_names_the_fix(tmp_path):
    with pytest.raises(MissingInputError, match="weights.json not found: run `dvc repro fetch"):
        records.read_weights_info(tmp_path)
    (tmp_path / "weights.json").write_text(json.dumps({"backbone": "tiny", "random_init": 1}))
    with pytest.raises(BadInputError, match="lacks .*weights_source.*fetch_weights"):
        records.read_weights_info(tmp_path)


def test_one_banner_for_every_record_that_carries_the_weights():
    info = random_weights()
    assert info.banner == "RANDOM-INIT backbone (not RadImageNet)"
    assert records.banner(info.to_dict()) == info.banner  # weights.json, train.json
    assert records.banner({"random_init": "true", "weights_label": "x"}) == "x"  # MLflow tags
    assert records.banner({"random_init": True}) == records.RANDOM_LABEL  # no label recorded
    real = dataclasses.replace(info, random_init=False, weights_label="RadImageNet")
    assert real.banner is None and records.banner({"random_init": "false"}) is None


def test_feature_meta_keeps_one_name_per_field(tmp_path):
    write_manifest(tmp_path / "train.csv", [manifest_row("a.png", 0, "p0", "0" * 64)])
    meta = records.manifest_meta(
        "train", tmp_path / "train.csv", (1, 3, 8), weights=random_weights(), precision="bfloat16"
    )
    records.write_feature_meta(tmp_path / "features", meta)
    on_disk = json.loads((tmp_path / "features" / "train.json").read_text())
    # flat, under the same names as in weights.json and the MLflow tags
    assert on_disk["random_init"] is True and on_disk["weights_label"] == meta.weights.weights_label
    assert "weights" not in on_disk and "weights_random_init" not in on_disk
    assert records.read_feature_meta(tmp_path / "features", "train") == meta
    bare = dataclasses.replace(meta, weights=None)
    assert records.FeatureMeta.from_dict(bare.to_dict()) == bare


def test_train_info_round_trips_and_refuses_an_old_file(tmp_path):
    info = records.TrainInfo(
        mode="cached",
        weights=random_weights(),
        class_names=["a", "b"],
        seed=3,
        best_epoch=4,
        epochs_run=9,
        stopped_early=True,
        model_sha256="cd" * 32,
        best={"val_data_loss": 0.5, "accuracy": 0.75},
        collapse={"collapsed": False},
        details={"views": 5},
    )
    records.write_train_info(tmp_path, info)
    on_disk = json.loads((tmp_path / "train.json").read_text())
    assert on_disk["best_val_data_loss"] == 0.5 and on_disk["best_epoch"] == 4
    assert on_disk["views"] == 5 and on_disk["weights_label"] == info.weights.weights_label
    assert records.read_train_info(tmp_path) == info
    del on_disk["weights_label"]
    (tmp_path / "train.json").write_text(json.dumps(on_disk))
    with pytest.raises(BadInputError, match="lacks \\['weights_label'\\].*dvc repro train"):
        records.read_train_info(tmp_path)


def test_json_safe_turns_non_finite_numbers_into_null():
    nested = {"val": {"accuracy": 0.5, "auc": math.nan, "n": np.int64(3)}, "x": -math.inf}
    assert results.json_safe(nested) == {"val": {"accuracy": 0.5, "auc": None, "n": 3}, "x": None}


def test_compact_metrics_keep_the_headline_numbers_and_the_collapse_alarm():
    test = {"n": 63, "log_loss": 1.1, "recall/No cancer": 1.0, "majority_prediction_share": 1.0}
    for name in COMPACT_METRICS:
        test.update({name: 0.5, f"{name}_ci_low": 0.25, f"{name}_ci_high": 0.75})
    val = {**test, "majority_prediction_share": 0.6}
    results = {
        "random_init": True,
        "backbone": "tiny",
        "collapse": {"collapsed": True, "val_majority_share": 1.0},
        "val": val,
        "test": test,
    }
    compact = compact_metrics(results)
    assert compact["random_init"] is True and compact["collapse"] == {"collapsed": True}
    assert compact["test"]["single_class_predictions"] is True
    assert compact["val"]["single_class_predictions"] is False
    assert compact["test"]["roc_auc_macro_low"] == 0.25 and compact["test"]["ece_high"] == 0.75
    assert set(compact) == {"random_init", "collapse", "val", "test"}
    assert len(compact["test"]) == 3 * len(COMPACT_METRICS) + 1  # no per-class, no log loss


def test_predictions_frame_round_trip(tmp_path):
    frame = pd.DataFrame(
        {"path": ["a.png", "b.png"], "patient": ["007", "8"], "label": [2, 0], "class": ["", ""]}
    )
    proba = np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    out = results.predictions_frame(frame, proba, CLASSES)
    assert list(out.columns) == [
        "path",
        "patient",
        "label",
        "true_class",
        "proba/No cancer",
        "proba/Breast cancer",
        "proba/Prostate cancer",
        "predicted_label",
        "predicted_class",
    ]
    assert list(out["true_class"]) == ["Prostate cancer", "No cancer"]
    assert list(out["predicted_class"]) == ["Prostate cancer", "Breast cancer"]
    out.to_csv(tmp_path / "p.csv", index=False)
    y, p, back = results.read_predictions(tmp_path / "p.csv", CLASSES)
    np.testing.assert_array_equal(y, [2, 0])
    np.testing.assert_allclose(p, proba)
    assert list(back["patient"]) == ["007", "8"], "patient ids stay strings"
    with pytest.raises(ValueError, match="re-run `dvc repro evaluate`"):
        results.read_predictions(tmp_path / "p.csv", ["a", "b"])


def test_read_manifest_keeps_ids_as_text_and_names_the_fix(tmp_path):
    from petscan.handoff.manifests import manifest_paths, read_manifest

    paths = manifest_paths(tmp_path)
    assert list(paths) == ["train", "val", "test"] and paths["val"] == tmp_path / "val.csv"
    write_manifest(paths["train"], [manifest_row("a/0001_v1.png", 0, "0001", "0" * 64)])
    frame = read_manifest(paths["train"])
    assert frame.loc[0, "patient"] == "0001" and frame.loc[0, "label"] == 0  # not the int 1
    with pytest.raises(MissingInputError, match="run `dvc repro split` first"):
        read_manifest(paths["val"])
    pd.DataFrame({"path": ["a.png"]}).to_csv(paths["test"], index=False)
    with pytest.raises(BadInputError, match=r"lacks column\(s\) \['label'\]: rerun"):
        read_manifest(paths["test"])
