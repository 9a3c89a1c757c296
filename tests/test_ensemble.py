"""The fold ensemble (`model.ensemble`) and temperature scaling (`model.calibration`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import tiny_model_params

from petscan.model.backbones import build_backbone
from petscan.model.calibration import fit_temperature, nll, scale_probabilities
from petscan.model.ensemble import build_ensemble_model, ensemble_head
from petscan.model.network import build_feature_extractor, build_head
from petscan.model.saving import load_model, save_model
from petscan.params.schema import section

TINY = section("model", tiny_model_params())


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_ensemble_is_the_mean_of_the_heads_and_survives_safe_mode(tmp_path):
    build_backbone("tiny", (32, 32, 3)).save(tmp_path / "weights.h5")
    extractor = build_feature_extractor(TINY, tmp_path / "weights.h5")
    x = _images(6)
    features = extractor.predict(x, verbose=0)
    rng = np.random.default_rng(1)
    heads = [
        build_head(32, 3, TINY, seed=s, train_features=features * rng.uniform(0.5, 2) + s)
        for s in range(3)
    ]
    mean = np.mean([h.predict(features, verbose=0) for h in heads], axis=0)
    np.testing.assert_allclose(ensemble_head(heads).predict(features, verbose=0), mean, atol=1e-6)
    full = build_ensemble_model(TINY, heads, tmp_path / "weights.h5")
    np.testing.assert_allclose(full.predict(x, verbose=0), mean, atol=1e-6)
    # saved and loaded with safe_mode=True (saving.load_model): the same numbers
    path = save_model(full, tmp_path / "model.keras")
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), mean, atol=1e-6)
    # a temperature inside the graph: the numpy map of the mean, saved too
    hot = save_model(
        build_ensemble_model(TINY, heads, tmp_path / "weights.h5", 2.5), tmp_path / "hot.keras"
    )
    np.testing.assert_allclose(
        load_model(hot).predict(x, verbose=0), scale_probabilities(mean, 2.5), atol=1e-6
    )


def test_ensemble_refuses_one_head_or_mismatched_heads():
    with pytest.raises(ValueError, match="at least 2 heads"):
        ensemble_head([build_head(8, 3, TINY)])
    with pytest.raises(ValueError, match="disagree"):
        ensemble_head([build_head(8, 3, TINY), build_head(16, 3, TINY)])


def test_temperature_scaling_lowers_the_nll_of_over_confident_predictions():
    rng = np.random.default_rng(0)
    n, k = 2000, 3
    y = rng.integers(0, k, n)
    # calibrated logits (true class +1), then sharpened 3x: over-confident by construction
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sharp = scale_probabilities(calibrated, 1 / 3)
    t = fit_temperature(y, sharp)
    assert 2.5 < t < 3.5  # recovers the sharpening
    assert nll(y, scale_probabilities(sharp, t)) < nll(y, sharp) - 0.1
    # independent check: a grid search of the same NLL finds the same minimum
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = grid[np.argmin([nll(y, scale_probabilities(sharp, g)) for g in grid])]
    assert abs(np.log(t) - np.log(best)) < 0.01
    # the predicted class never changes; T = 1 is the identity
    np.testing.assert_array_equal(scale_probabilities(sharp, t).argmax(1), sharp.argmax(1))
    np.testing.assert_allclose(scale_probabilities(calibrated, 1.0), calibrated, atol=1e-12)
    # the Keras layer is the same map
    from petscan.model.calibration import TemperatureScale

    out = keras.ops.convert_to_numpy(TemperatureScale(t)(sharp[:5].astype("float32")))
    np.testing.assert_allclose(out, scale_probabilities(sharp[:5], t), atol=1e-5)
