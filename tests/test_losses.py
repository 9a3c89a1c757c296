"""Focal losses, cross-entropy and class weights (petscan.model.losses), and the checks of
their params (`train.loss`, `train.class_weight`) by the schema."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from petscan.model.losses import (
    CategoricalFocalLoss,
    OneVsRestFocalLoss,
    class_weights,
    make_loss,
)
from petscan.params.schema import defaults, section, validate
from petscan.utils.errors import ParamsError

LOSS = defaults().train.loss  # a whole train.loss section, as the stages get it
ALPHA = [0.5, 0.3, 0.2]
# Three samples, labels 0, 1, 2 (sparse integer labels, the convention of petscan.model.losses).
Y = np.array([0, 1, 2])
P = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], dtype="float32")


def _value(loss, y, p, sample_weight=None) -> float:
    return float(keras.ops.convert_to_numpy(loss(y, p, sample_weight=sample_weight)))


def np_categorical_focal(y, p, alpha, gamma):
    """Independent NumPy reference: -alpha_t (1 - p_t)^gamma log(p_t), per sample."""
    p_t = np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)
    return -np.asarray(alpha)[y] * (1 - p_t) ** gamma * np.log(p_t)


def np_one_vs_rest_focal(y, p, alpha, gamma):
    """Independent NumPy reference of the notebook's loss, per sample (mean over classes).

    The clip bound 1 - 1e-7 is taken as float32 rounds it (0.99999988), as in training.
    """
    onehot = np.eye(p.shape[1])[y]
    p = np.clip(p, 1e-7, float(np.float32(1 - 1e-7)))
    a = np.asarray(alpha)
    term = -onehot * a * (1 - p) ** gamma * np.log(p) - (1 - onehot) * (1 - a) * p**gamma * np.log(
        1 - p
    )
    return term.mean(axis=1)


def random_case(n=64, k=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return rng.integers(0, k, size=n), p.astype("float32")


# ------------------------------------------------------------------ categorical focal


def test_categorical_focal_by_hand():
    # sample 0: t=0, p_t=0.8: 0.5 * (0.2)^2 * -ln 0.8 = 0.5 * 0.04 * 0.2231436 = 0.0044629
    # sample 1: t=1, p_t=0.5: 0.3 * (0.5)^2 * -ln 0.5 = 0.3 * 0.25 * 0.6931472 = 0.0519860
    # sample 2: t=2, p_t=0.1: 0.2 * (0.9)^2 * -ln 0.1 = 0.2 * 0.81 * 2.3025851 = 0.3730188
    # mean over the batch = (0.0044629 + 0.0519860 + 0.3730188) / 3 = 0.1431559
    loss = CategoricalFocalLoss(alpha=ALPHA, gamma=2.0)
    assert _value(loss, Y, P) == pytest.approx(0.1431559, abs=1e-6)
    per_sample = CategoricalFocalLoss(alpha=ALPHA, gamma=2.0, reduction=None)(Y, P)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(per_sample), [0.0044629, 0.0519860, 0.3730188], atol=1e-6
    )


def test_categorical_focal_matches_numpy_reference():
    y, p = random_case()
    for gamma in (0.0, 0.5, 2.0, 5.0):
        loss = CategoricalFocalLoss(alpha=[0.25, 1.0, 2.0], gamma=gamma)
        expected = np_categorical_focal(y, p.astype("float64"), [0.25, 1.0, 2.0], gamma).mean()
        assert _value(loss, y, p) == pytest.approx(expected, rel=1e-5)


def test_categorical_focal_gamma0_alpha1_is_crossentropy():
    y, p = random_case(seed=1)
    focal = CategoricalFocalLoss(alpha=[1.0, 1.0, 1.0], gamma=0.0)
    ce = keras.losses.SparseCategoricalCrossentropy()
    assert _value(focal, y, p) == pytest.approx(_value(ce, y, p), rel=1e-5)
    w = np.random.default_rng(2).uniform(0.1, 3, size=len(y))
    assert _value(focal, y, p, w) == pytest.approx(_value(ce, y, p, w), rel=1e-5)


def test_labels_of_shape_n_by_1_accepted_and_one_hot_refused():
    loss = CategoricalFocalLoss(alpha=ALPHA, gamma=2.0)
    assert _value(loss, Y.reshape(-1, 1), P) == pytest.approx(0.1431559, abs=1e-6)
    with pytest.raises(ValueError, match="sparse integer labels"):
        loss(np.eye(3)[Y], P)


# ------------------------------------------------------------------ one-vs-rest focal


def test_one_vs_rest_focal_by_hand():
    # term_c = -y_c a_c (1-p_c)^2 ln p_c - (1-y_c)(1-a_c) p_c^2 ln(1-p_c)
    # sample 0 (y=0, p=.8,.1,.1):
    #   c0: .5 * .2^2 * -ln .8 = .0044629;  c1: .7 * .1^2 * -ln .9 = .0007375;
    #   c2: .8 * .1^2 * -ln .9 = .0008429;  mean = .0060433 / 3 = .0020144
    # sample 1 (y=1, p=.2,.5,.3):
    #   c0: .5 * .2^2 * -ln .8 = .0044629;  c1: .3 * .5^2 * -ln .5 = .0519860;
    #   c2: .8 * .3^2 * -ln .7 = .0256806;  mean = .0821295 / 3 = .0273765
    # sample 2 (y=2, p=.6,.3,.1):
    #   c0: .5 * .6^2 * -ln .4 = .1649323;  c1: .7 * .3^2 * -ln .7 = .0224705;
    #   c2: .2 * .9^2 * -ln .1 = .3730188;  mean = .5604216 / 3 = .1868072
    # batch mean = (.0020144 + .0273765 + .1868072) / 3 = .0720660
    loss = OneVsRestFocalLoss(alpha=ALPHA, gamma=2.0)
    assert _value(loss, Y, P) == pytest.approx(0.0720660, abs=1e-6)
    per_sample = OneVsRestFocalLoss(alpha=ALPHA, gamma=2.0, reduction=None)(Y, P)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(per_sample), [0.0020144, 0.0273765, 0.1868072], atol=1e-6
    )


def test_one_vs_rest_focal_matches_numpy_reference_including_clipping():
    y, p = random_case(seed=3)
    p[0] = [1.0, 0.0, 0.0]  # exercises the [1e-7, 1 - 1e-7] clip
    for gamma in (0.0, 1.0, 2.0):
        loss = OneVsRestFocalLoss(alpha=ALPHA, gamma=gamma)
        expected = np_one_vs_rest_focal(y, p.astype("float64"), ALPHA, gamma).mean()
        assert _value(loss, y, p) == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------ keras integration


@pytest.mark.parametrize("cls", [CategoricalFocalLoss, OneVsRestFocalLoss])
def test_sample_weights_honoured(cls):
    y, p = random_case(n=10, seed=4)
    w = np.array([0, 1, 2, 0.5, 1, 1, 3, 0, 1, 1], dtype="float32")
    per_sample = keras.ops.convert_to_numpy(cls(alpha=ALPHA, gamma=2.0, reduction=None)(y, p))
    # Keras' default "sum_over_batch_size": sum(w * loss) / N, as for built-in losses.
    expected = float(np.sum(w * per_sample) / len(y))
    assert _value(cls(alpha=ALPHA, gamma=2.0), y, p, w) == pytest.approx(expected, rel=1e-5)
    assert _value(cls(alpha=ALPHA, gamma=2.0), y, p, np.zeros(10)) == 0.0


@pytest.mark.parametrize("cls", [CategoricalFocalLoss, OneVsRestFocalLoss])
def test_get_config_round_trip(cls):
    loss = cls(alpha=ALPHA, gamma=1.5, reduction="sum", name="my_loss")
    config = loss.get_config()
    assert config["alpha"] == ALPHA and config["gamma"] == 1.5 and config["reduction"] == "sum"
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is cls
    assert again.get_config() == config
    y, p = random_case(seed=5)
    assert _value(again, y, p) == pytest.approx(_value(loss, y, p))


def test_saved_model_reloads_loss_and_fits_with_class_weight(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(24, 4)).astype("float32")
    y = np.arange(24) % 3
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    loss = make_loss(loss_params(name="focal", variant="categorical", alpha=ALPHA, gamma=2.0), 3)
    model.compile(optimizer="adam", loss=loss)
    history = model.fit(
        x, y, epochs=2, batch_size=8, class_weight={0: 1.0, 1: 2.0, 2: 0.5}, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, CategoricalFocalLoss)
    assert loaded.loss.alpha == ALPHA and loaded.loss.gamma == 2.0


# ------------------------------------------------------------------ make_loss


def loss_params(**values):
    """A `train.loss` section: the shipped one with `values` changed, checked by the schema."""
    return section("train", {"loss": {**LOSS.model_dump(), **values}}).loss


def test_make_loss_builds_each_kind():
    assert isinstance(
        make_loss(loss_params(name="crossentropy"), 3), keras.losses.SparseCategoricalCrossentropy
    )
    focal = make_loss(loss_params(name="focal", variant="categorical", alpha=ALPHA, gamma=2), 3)
    assert isinstance(focal, CategoricalFocalLoss) and focal.alpha == ALPHA
    ovr = make_loss(loss_params(name="focal", variant="one_vs_rest", alpha=ALPHA, gamma=2), 3)
    assert isinstance(ovr, OneVsRestFocalLoss)
    assert make_loss(loss_params(alpha=None, gamma=0), 3).alpha == [1.0, 1.0, 1.0]
    assert make_loss(loss_params(variant="one_vs_rest", alpha=None), 3).alpha == [0.5] * 3
    assert make_loss(loss_params(alpha=0.25), 3).alpha == [0.25] * 3


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"name": "focal", "alpha": [0.5, 0.5], "gamma": 2},
            r"train\.loss\.alpha = \[0\.5, 0\.5\]: needs one value a class.*got 2",
        ),
        (
            {"name": "focal", "alpha": ALPHA, "gamma": -1},
            r"train\.loss\.gamma = -1: input should be greater than or equal to 0",
        ),
        (
            {"name": "focal", "alpha": [0.5, -0.1, 0.2], "gamma": 2},
            r"train\.loss\.alpha\[1\] = -0\.1: input should be greater than or equal to 0",
        ),
        ({"name": "hinge"}, r"train\.loss\.name = 'hinge': input should be 'focal' or"),
        (
            {"name": "focal", "variant": "binary", "alpha": ALPHA},
            r"train\.loss\.variant = 'binary': input should be 'categorical' or 'one_vs_rest'",
        ),
        (
            {"name": "focal", "variant": "one_vs_rest", "alpha": [2, 1, 1]},
            r"train\.loss\.alpha\[0\] = 2: input should be less than or equal to 1",
        ),
    ],
)
def test_the_schema_refuses_a_bad_loss(params, message):
    """Checked once, with the whole file (the alpha count against data.classes' 3 classes):
    `make_loss` never sees a bad `train.loss`."""
    with pytest.raises(ParamsError, match=message):
        validate({"train": {"loss": {**LOSS.model_dump(), **params}}})


@pytest.mark.parametrize(
    "cls, alpha, gamma, message",
    [
        (CategoricalFocalLoss, ALPHA, -1, "gamma must be a finite number >= 0"),
        (CategoricalFocalLoss, [0.5, -0.1, 0.2], 2, "alpha must be"),
        (OneVsRestFocalLoss, [], 2, "alpha must be"),
        (OneVsRestFocalLoss, [2, 1, 1], 2, r"in \[0, 1\]"),
    ],
)
def test_focal_losses_refuse_bad_constructor_arguments(cls, alpha, gamma, message):
    """The loss classes check their own arguments (a saved model's config included)."""
    with pytest.raises(ValueError, match=message):
        cls(alpha=alpha, gamma=gamma)


# ------------------------------------------------------------------ class weights


def test_balanced_class_weights_on_seed_train_counts():
    labels = np.repeat([0, 1, 2], [381, 333, 358])
    weights = class_weights(labels, "balanced", 3)
    # n / (k * count): 1072 / (3 * 381) = 0.93788..., 1072 / 999 = 1.07307..., 1072 / 1074
    assert [round(weights[c], 4) for c in range(3)] == [0.9379, 1.0731, 0.9981]
    assert weights[0] == pytest.approx(1072 / (3 * 381))
    sk = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose([weights[c] for c in range(3)], sk)
    assert all(type(w) is float for w in weights.values())


def test_class_weights_none_and_list():
    labels = np.array([0, 1, 2, 2])
    assert class_weights(labels, "none", 3) is None
    assert class_weights(labels, None, 3) is None
    assert class_weights(labels, [1, 2, 0.5], 3) == {0: 1.0, 1: 2.0, 2: 0.5}
    weights = section("train", {"class_weight": [1, 2, 0.5]}).class_weight
    assert class_weights(labels, weights, 3) == {0: 1.0, 1: 2.0, 2: 0.5}
    assert all(type(w) is float for w in class_weights(labels, weights, 3).values())


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, 2], r"train\.class_weight = \[1\.0, 2\.0\]: needs one value a class.*got 2"),
        ([1, 0, 2], r"train\.class_weight\[1\] = 0: input should be greater than 0"),
        ("inverse", r"train\.class_weight = 'inverse': input should be 'balanced' or 'none'"),
    ],
)
def test_the_schema_refuses_bad_class_weights(value, message):
    with pytest.raises(ParamsError, match=message):
        validate({"train": {"class_weight": value}})


def test_balanced_class_weights_missing_class_is_clear_error():
    with pytest.raises(ValueError, match=r"class index\(es\) \[1\] have no training images"):
        class_weights(np.array([0, 0, 2]), "balanced", 3)
    with pytest.raises(ValueError, match="must lie in 0..2"):
        class_weights(np.array([0, 3]), "balanced", 3)
    assert not math.isnan(class_weights(np.array([0, 1, 2]), "balanced", 3)[1])
