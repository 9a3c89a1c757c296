"""The classifier network, its pre-processing layer and its save/load path."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import tiny_model_params

from petscan.model.backbones import build_backbone
from petscan.model.network import (
    Preprocess,
    Standardize,
    build_feature_extractor,
    build_full_model,
    build_head,
    preprocess_array,
    resolve_preprocessing,
)
from petscan.model.saving import load_model
from petscan.params.schema import section
from petscan.utils.errors import ParamsError

TINY = tiny_model_params()
SEED_HEAD = {"backbone": "inception_resnet_v2", "input_size": [224, 224], "head_units": 1024}
SEED_NET = tiny_model_params(**SEED_HEAD, standardize=False)  # the seed's exact head


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _np(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def _trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ----------------------------------------------------------------------------- the seed network


@pytest.fixture(scope="module")
def seed_network() -> keras.Model:
    return build_full_model(SEED_NET, 3, weights_path=None)


@pytest.mark.slow
def test_seed_network_parameter_counts(seed_network):
    assert seed_network.count_params() == 55_913_699
    assert _trainable_count(seed_network) == 1_576_963
    assert seed_network.get_layer("inception_resnet_v2").count_params() == 54_336_736
    assert seed_network.get_layer("avg_pool").output.shape[-1] == 1536
    assert seed_network.get_layer("head_dense").units == 1024
    assert seed_network.get_layer("head_dropout").rate == 0.7
    assert seed_network.get_layer("head_dense").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert seed_network.output.shape[-1] == 3


@pytest.mark.slow
def test_seed_network_backbone_frozen_in_inference_mode(seed_network):
    backbone = seed_network.get_layer("inception_resnet_v2")
    assert not backbone.trainable
    assert backbone.trainable_weights == []
    # The backbone is called with training=False: batch norm uses its moving statistics.
    x = _images(1, 224)
    feats = keras.Model(seed_network.input, seed_network.get_layer("avg_pool").output)
    np.testing.assert_allclose(
        _np(feats(x, training=True)), _np(feats(x, training=False)), rtol=1e-5
    )


# ----------------------------------------------------------------------------- other backbones


def test_second_keras_backbone_builds_a_working_extractor():
    params = tiny_model_params(backbone="resnet50", input_size=[32, 32], preprocessing="keras")
    extractor = build_feature_extractor(params, weights_path=None)
    out = extractor.predict(_images(2), verbose=0)
    assert out.shape == (2, 2048)
    assert np.isfinite(out).all()
    assert extractor.get_layer("preprocess").concrete == "caffe"


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ParamsError, match="model.backbone = 'vgg99': input should be"):
        section("model", {"backbone": "vgg99"})
    # a name read from a file (weights.json) is looked up in the same registry
    with pytest.raises(ValueError, match="unknown backbone 'vgg99'"):
        build_backbone("vgg99", (32, 32, 3))


def test_missing_weights_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"nope\.h5 not found: run `dvc repro fetch_weights`"
    ):
        build_feature_extractor(TINY, weights_path=tmp_path / "nope.h5")


def test_extractor_loads_a_legacy_h5_backbone_file(tmp_path):
    source = build_backbone("tiny", (32, 32, 3))
    source.get_layer("tiny_conv0").kernel.assign(np.full((3, 3, 3, 8), 0.25, "float32"))
    source.save(tmp_path / "weights.h5")
    extractor = build_feature_extractor(TINY, tmp_path / "weights.h5")
    loaded = extractor.get_layer("tiny_backbone")
    for expected, got in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())
    x = _images(3)
    expected = source.predict(preprocess_array(x, "radimagenet", "tiny"), verbose=0).mean((1, 2))
    np.testing.assert_allclose(extractor.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- preprocessing


PIXEL = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")  # one (R, G, B) pixel


@pytest.mark.parametrize(
    ("mode", "backbone", "expected"),
    [
        ("rescale", "inception_resnet_v2", (10 / 255, 20 / 255, 30 / 255)),
        (
            "radimagenet",
            "inception_resnet_v2",
            ((30 - 103.939) / 255, (20 - 116.779) / 255, (10 - 123.68) / 255),
        ),
        ("keras", "inception_resnet_v2", (10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1)),
        ("keras", "resnet50", (30 - 103.939, 20 - 116.779, 10 - 123.68)),
        (
            "keras",
            "densenet121",
            ((10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225),
        ),
    ],
)
def test_preprocessing_modes_on_a_hand_computed_pixel(mode, backbone, expected):
    np.testing.assert_allclose(preprocess_array(PIXEL, mode, backbone)[0, 0, 0], expected, 1e-5)
    layer = Preprocess(mode, backbone)
    np.testing.assert_allclose(_np(layer(PIXEL))[0, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "module"),
    [
        ("inception_resnet_v2", keras.applications.inception_resnet_v2),
        ("resnet50", keras.applications.resnet50),
        ("densenet121", keras.applications.densenet),
    ],
)
def test_keras_mode_matches_keras_applications(backbone, module):
    x = _images(2, 8, seed=3)
    expected = module.preprocess_input(x.copy())
    np.testing.assert_allclose(preprocess_array(x, "keras", backbone), expected, rtol=1e-5)
    np.testing.assert_allclose(
        _np(Preprocess("keras", backbone)(x)), expected, rtol=1e-5, atol=1e-5
    )


def test_radimagenet_is_caffe_mode_then_rescale():
    x = _images(2, 8, seed=4)
    caffe = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(preprocess_array(x, "radimagenet", "tiny"), caffe / 255, 1e-5)


def test_grey_becomes_three_channels_and_alpha_is_dropped():
    grey = np.full((1, 2, 2, 1), 51.0, "float32")
    out = preprocess_array(grey, "rescale", "tiny")
    np.testing.assert_allclose(out, np.full((1, 2, 2, 3), 0.2), rtol=1e-6)
    np.testing.assert_allclose(_np(Preprocess("rescale", "tiny")(grey)), out, rtol=1e-6)
    rgba = np.concatenate([PIXEL, np.full((1, 1, 1, 1), 7.0, "float32")], axis=-1)
    np.testing.assert_allclose(
        preprocess_array(rgba, "radimagenet", "tiny"), preprocess_array(PIXEL, "radimagenet", "x")
    )
    assert Preprocess("rescale", "tiny").compute_output_shape((None, 4, 4, 1)) == (None, 4, 4, 3)


def test_unknown_preprocessing_is_a_clear_error():
    with pytest.raises(ValueError, match="model.preprocessing 'imagenet'"):
        resolve_preprocessing("imagenet", "tiny")
    with pytest.raises(ValueError, match="model.preprocessing"):
        Preprocess("imagenet", "tiny")


# ----------------------------------------------------------------------------- head and full model


def test_head_structure_and_parameter_count():
    head = build_head(32, 3, TINY, seed=1)
    # Standardize holds a mean and a scale per feature (non-trainable), then the seed's head
    assert head.count_params() == 2 * 32 + 32 * 8 + 8 + 8 * 3 + 3
    assert _trainable_count(head) == 32 * 8 + 8 + 8 * 3 + 3
    seed_head = tiny_model_params(standardize=False)
    assert build_head(32, 3, seed_head).count_params() == 32 * 8 + 8 + 27
    dense = head.get_layer("head_dense")
    assert dense.activation is keras.activations.relu
    assert dense.kernel_regularizer.l2 == pytest.approx(0.001)
    assert head.get_layer("head_dropout").rate == pytest.approx(0.7)
    probs = head.predict(np.random.default_rng(0).normal(size=(5, 32)), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # The L2 penalty is the one loss the head adds: 0.001 * sum(kernel ** 2).
    kernel = dense.kernel.numpy()
    head(np.zeros((1, 32), "float32"))
    assert float(head.losses[0]) == pytest.approx(0.001 * float((kernel**2).sum()), rel=1e-5)


def test_seed_head_with_standardization_has_the_seed_trainable_parameters():
    head = build_head(1536, 3, tiny_model_params(**SEED_HEAD, standardize=True))
    assert _trainable_count(head) == 1_576_963
    assert head.count_params() == 1_576_963 + 2 * 1536  # 55,916,771 with the backbone


def test_standardize_fits_train_statistics_and_leaves_constant_dimensions_unscaled():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 0.002, size=(40, 2, 5)).astype("float32")  # (N, V, D)
    train[..., 4] = 0.25  # a constant dimension
    layer = Standardize().adapt(train)
    flat = train.reshape(-1, 5).astype("float64")
    np.testing.assert_allclose(layer.mean.numpy(), flat.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(layer.scale.numpy()[:4], flat[:, :4].std(axis=0), rtol=1e-4)
    assert layer.scale.numpy()[4] == 1.0
    out = _np(layer(flat.astype("float32")))
    np.testing.assert_allclose(out[:, :4].mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out[:, :4].std(axis=0), 1.0, rtol=1e-3)
    # a value off a constant dimension moves by its raw difference, not by 1 / 0
    shifted = _np(layer(np.array([[3, 3, 3, 3, 0.26]], "float32")))
    assert shifted[0, 4] == pytest.approx(0.01, abs=1e-6)


def test_head_seed_fixes_initial_weights():
    a, b, c = (
        build_head(16, 3, TINY, seed=7),
        build_head(16, 3, TINY, seed=7),
        build_head(16, 3, TINY, 8),
    )
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    kernels = [m.get_layer("head_dense").kernel.numpy() for m in (a, c)]
    assert not np.array_equal(*kernels)


def test_full_model_equals_head_on_extractor_features(tmp_path):
    build_backbone("tiny", (32, 32, 3)).save(tmp_path / "weights.h5")
    extractor = build_feature_extractor(TINY, tmp_path / "weights.h5")
    x = _images(4)
    features = extractor.predict(x, verbose=0)
    head = build_head(32, 3, TINY, seed=0, train_features=features * 0.5 + 1.0)
    full = build_full_model(TINY, 3, tmp_path / "weights.h5", head=head)
    expected = head.predict(features, verbose=0)
    np.testing.assert_allclose(full.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert full.get_layer("head_dense") is head.get_layer("head_dense")  # shared, not copied
    assert full.get_layer("standardize") is head.get_layer("standardize")
    assert _trainable_count(full) == _trainable_count(head)


def test_full_model_rejects_a_head_of_the_wrong_width():
    with pytest.raises(ValueError, match="retrain the head"):
        build_full_model(TINY, 3, None, head=build_head(64, 3, TINY))


def test_trainable_backbone_layers_unfreezes_the_top_but_never_batch_norm():
    frozen = build_full_model(TINY, 3, None)
    tuned = build_full_model(TINY, 3, None, trainable_backbone_layers=3)
    backbone = tuned.get_layer("tiny_backbone")
    trainable = [layer.name for layer in backbone.layers if layer.trainable_weights]
    assert trainable == ["tiny_conv2"]  # the top 3 are conv2, bn2, relu2; bn stays frozen
    assert _trainable_count(tuned) == _trainable_count(frozen) + 3 * 3 * 16 * 32 + 32


def test_saved_model_round_trips_with_safe_mode(tmp_path):
    params = tiny_model_params(preprocessing="keras", dropout=0.0)
    train_features = np.random.default_rng(1).normal(0.01, 0.001, size=(20, 32))
    head = build_head(32, 3, params, seed=0, train_features=train_features)
    full = build_full_model(params, 3, None, head=head)
    path = tmp_path / "model.keras"
    full.save(path)
    loaded = load_model(path)
    for name in ("mean", "scale"):  # the standardization travels inside the file
        np.testing.assert_array_equal(
            getattr(loaded.get_layer("standardize"), name).numpy(),
            getattr(head.get_layer("standardize"), name).numpy(),
        )
    layer = loaded.get_layer("preprocess")
    assert isinstance(layer, Preprocess)
    assert (layer.mode, layer.backbone, layer.concrete) == ("keras", "tiny", "tf")
    x = _images(3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), full.predict(x, verbose=0), 1e-6)
    # Batch norm stays in inference mode after loading, even when called with training=True.
    np.testing.assert_allclose(
        _np(loaded(x, training=True)), _np(loaded(x, training=False)), rtol=1e-5
    )


def test_load_model_missing_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro train`"):
        load_model(tmp_path / "model.keras")


# ----------------------------------------------------------------------------- precision


def test_bfloat16_backbone_gives_float32_features_close_to_float32(tmp_path):
    build_backbone("tiny", (32, 32, 3)).save(tmp_path / "weights.h5")
    x = _images(6)
    full = build_feature_extractor(TINY, tmp_path / "weights.h5", "float32").predict(x, verbose=0)
    half = build_feature_extractor(TINY, tmp_path / "weights.h5", "bfloat16")
    assert half.get_layer("tiny_backbone").dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    got = half.predict(x, verbose=0)
    assert got.dtype == np.float32 and got.shape == full.shape
    cosine = (got * full).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(full, axis=1)
    assert cosine.min() > 0.99
    assert not np.array_equal(got, full), "bfloat16 must really compute in bfloat16"


def test_precision_auto_follows_the_hardware_and_bad_values_are_refused():
    from petscan.model.network import native_bfloat16, resolve_precision

    assert resolve_precision("auto") == ("bfloat16" if native_bfloat16() else "float32")
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ParamsError, match="featurize.precision = 'float16': input should be"):
        section("featurize", {"precision": "float16"})


def test_saved_file_names_the_classes_as_before_the_package_split(tmp_path):
    """Keras writes each custom class's module into `model.keras`: the names from before
    the package split keep the same model the same bytes (model_sha256, dvc.lock)."""
    import json
    import re
    import zipfile

    from petscan.model.losses import DataLoss, make_loss
    from petscan.model.saving import save_model

    model = build_full_model(TINY, 3, None)
    loss = make_loss(section("train").loss, 3)
    model.compile(optimizer="adam", loss=loss, weighted_metrics=[DataLoss(loss)])
    save_model(model, tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
    modules = set(re.findall(r'"module": "(petscan[^"]*)"', config))
    assert modules == {"petscan.model", "petscan.losses"}
    assert json.loads(config)["compile_config"]["loss"]["registered_name"] == (
        "petscan>CategoricalFocalLoss"
    )
    loaded = load_model(tmp_path / "model.keras", compile=True)
    assert type(loaded.loss).__name__ == "CategoricalFocalLoss"
