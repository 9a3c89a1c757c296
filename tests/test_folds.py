"""The one fold definition (`data.folds`): patients kept together, every pooled image held
out exactly once, the test split never in the pool; tuning cuts the same folds."""

from __future__ import annotations

import numpy as np
import pytest

from petscan.data.folds import inner_split, patient_folds, pool_splits
from petscan.utils.errors import ParamsError


def _pool():
    rng = np.random.default_rng(0)
    train_groups = np.array([f"t{i // 2}" for i in range(40)])  # 20 patients, 2 images each
    val_groups = np.array([f"v{i}" for i in range(8)])
    train_y = np.repeat(np.arange(20) % 3, 2)  # a patient's images share the label
    val_y = np.arange(8) % 3
    train_x = rng.normal(size=(40, 3, 4)).astype(np.float32)
    val_x = rng.normal(size=(8, 1, 4)).astype(np.float32)
    return pool_splits(train_x, train_y, train_groups, val_x, val_y, val_groups), val_x


def test_folds_keep_patients_together_and_cover_the_pool_once():
    (x, y, groups), val_x = _pool()
    assert x.shape == (48, 3, 4)
    np.testing.assert_array_equal(x[40:, 2], val_x[:, 0])  # val's plain view repeated
    folds = patient_folds(y, groups, 5, seed=3, setting="train.folds")
    held = np.concatenate([va for _, va in folds])
    np.testing.assert_array_equal(np.sort(held), np.arange(48))  # exactly once each
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(y[tr]) == {0, 1, 2}
        fit, stop = inner_split(tr, y, groups, 5, seed=3)
        assert not set(groups[fit]) & set(groups[stop])  # early stopping: own patients
        assert not set(stop) & set(va) and set(fit) | set(stop) == set(tr)
    # the same arguments, the same folds (train's cv protocol and tune share them)
    again = patient_folds(y, groups, 5, seed=3)
    for (a, b), (c, d) in zip(folds, again, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    with pytest.raises(ParamsError, match="train.folds=30 but only 28 patients"):
        patient_folds(y, groups, 30, seed=0, setting="train.folds")


def test_the_pool_never_holds_test_rows():
    # the pool is exactly train then val: its length and its groups say so
    (x, y, groups), _ = _pool()
    assert len(groups) == 48 and all(g[0] in "tv" for g in groups)


def test_fit_folds_predicts_every_pooled_image_once_with_the_head_that_never_saw_it():
    from conftest import tiny_model_params

    from petscan.params.schema import section
    from petscan.training.cross_validation import fit_folds

    rng = np.random.default_rng(0)
    n = 36
    groups = np.array([f"p{i // 2}" for i in range(n)])  # 18 patients, two images each
    y = np.repeat(np.arange(18) % 3, 2)  # a patient's images share a label
    x = rng.normal(size=(n, 2, 6)).astype(np.float32)
    x[np.arange(n), :, y] += 3.0
    model = section("model", tiny_model_params(preprocessing="rescale", dropout=0.2))
    train = section(
        "train",
        {
            "batch_size": 8,
            "epochs": 3,
            "lr_schedule": {"boundaries": [], "values": [0.05]},
            "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 5},
            "loss": {"name": "crossentropy"},
            "protocol": "cv",
            "folds": 3,
        },
    )
    cv = fit_folds(x, y, groups, model, train, 3)
    np.testing.assert_array_equal(np.bincount(cv.fold_of), [len(va) for _, va in cv.folds])
    for i, (_, va) in enumerate(cv.folds):
        assert set(np.flatnonzero(cv.fold_of == i)) == set(va)
        np.testing.assert_allclose(cv.oof[va], cv.heads[i].predict(x[va, 0], verbose=0), atol=1e-6)
    np.testing.assert_allclose(cv.oof.sum(axis=1), 1.0, atol=1e-5)
    assert 0.05 <= cv.temperature <= 20 and cv.summary()["folds"] == 3
    assert list(cv.history()["fold"].unique()) == [0, 1, 2]
