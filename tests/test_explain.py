"""Grad-CAM heatmaps: a model built to see one bright square must point at it, in the
file's own pixel grid, through both resize modes and non-square files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model_params

keras = pytest.importorskip("keras")

from petscan.cli import explain as explain_cli  # noqa: E402
from petscan.data import images as pimages  # noqa: E402
from petscan.evaluation import gradcam as explain  # noqa: E402
from petscan.evaluation.overlay import overlay  # noqa: E402

INPUT = (32, 32)  # the square model's input; its feature map is 8 x 8 (4-pixel cells)
BACKGROUND = 60
# The square model's head: logit of "square" minus "no square" = 80 f_bright + 40 f_dark - 11.
HEAD_KERNEL = np.array([[-40.0, 40.0], [-20.0, 20.0]], np.float32)
HEAD_BIAS = np.array([5.5, -5.5], np.float32)


def square_model(head_normalization: bool = True) -> keras.Model:
    """Image -> [no square, square] probabilities; built, not trained.

    The backbone (a nested model, like the real one) has a 4 x 4 / stride 4 convolution
    with two channels: 0 fires on bright cells (mean brightness above 0.5), 1 on dark
    ones. The head (global average pooling, an optional standardization layer as issue 8
    adds, a softmax) says "square" mostly from channel 0, less from channel 1.
    """
    inner = keras.Input((*INPUT, 3))
    conv = keras.layers.Conv2D(2, 4, strides=4, name="cells")
    x = keras.layers.Activation("relu")(conv(inner))
    backbone = keras.Model(inner, x, name="square_backbone")
    kernel = np.full((4, 4, 3, 2), 1.0 / 48.0, np.float32)
    kernel[..., 1] *= -1.0
    conv.set_weights([kernel, np.array([-0.5, 0.5], np.float32)])

    image = keras.Input((*INPUT, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(image)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head_normalization:
        norm = keras.layers.Normalization(mean=[0.0, 0.0], variance=[1.0, 1.0], name="standardize")
        x = norm(x)
    dense = keras.layers.Dense(2, activation="softmax", name="probabilities")
    out = dense(x)
    dense.set_weights([HEAD_KERNEL, HEAD_BIAS])
    return keras.Model(image, out, name="square_classifier")


def with_square(height: int, width: int, top: int, left: int, size: int) -> np.ndarray:
    rgb = np.full((height, width, 3), BACKGROUND, np.uint8)
    rgb[top : top + size, left : left + size] = 255
    return rgb


def inside(peak: tuple[int, int], top: int, left: int, size: int) -> bool:
    col, row = peak
    return left <= col < left + size and top <= row < top + size


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return square_model()


def test_target_is_the_nested_backbone_output(model):
    layer, tensor = explain.find_target(model)
    assert layer.name == "square_backbone"
    assert tuple(tensor.shape[1:]) == (8, 8, 2)


def test_target_without_nested_model_is_last_4d_layer():
    image = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(image)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    flat = keras.Model(image, keras.layers.Dense(3, activation="softmax")(x))
    layer, _ = explain.find_target(flat)
    assert layer.name == "c2"


@pytest.mark.parametrize("method", explain.METHODS)
def test_heatmap_peaks_on_the_square(model, method):
    rgb = with_square(32, 32, top=8, left=20, size=8)  # cells (2..3, 5..6)
    (result,) = explain.explain_images(model, [rgb], "stretch", method=method)
    assert result.class_index == 1 and result.probability > 0.5
    assert result.heatmap.shape == (32, 32) and result.heatmap.dtype == np.float32
    assert result.heatmap.max() == pytest.approx(1.0) and result.heatmap.min() >= 0.0
    assert inside(result.peak, 8, 20, 8)
    # the square's region holds the heat: far from it the map is low
    assert result.heatmap[24:, :12].max() < 0.5


def reference_cams(rgb: np.ndarray, p_square: float) -> dict[str, np.ndarray]:
    """Both maps of class "square" computed by hand in NumPy for a 32 x 32 image.

    With global average pooling (64 cells) and a 2-class softmax, d log p1 / d A_k(ij) is
    the same at every cell: g_k = (1 - p1) (W_k1 - W_k0) / 64. Grad-CAM weighs channel k
    by g_k; Grad-CAM++ by sum_ij g_k^2 / (2 g_k^2 + S_k g_k^3) relu(g_k), S_k = sum_ij A_k.
    """
    cells = rgb[..., 0].astype(np.float64).reshape(8, 4, 8, 4).mean(axis=(1, 3)) / 255.0
    fmap = np.stack([np.maximum(cells - 0.5, 0), np.maximum(0.5 - cells, 0)], axis=-1)
    grads = (1.0 - p_square) * (HEAD_KERNEL[:, 1] - HEAD_KERNEL[:, 0]) / 64.0
    sums = fmap.sum(axis=(0, 1))
    weights = {
        "gradcam": grads,
        "gradcam++": 64 * grads**2 / (2 * grads**2 + sums * grads**3) * np.maximum(grads, 0),
    }
    out = {}
    for method, w in weights.items():
        cam = np.maximum(fmap @ w, 0)
        out[method] = cam / cam.max()
    return out


def test_both_methods_match_a_numpy_reference_and_differ(model):
    rgb = with_square(32, 32, top=8, left=20, size=8)
    p_square = float(model.predict(rgb[None].astype(np.float32), verbose=0)[0, 1])
    assert 0.5 < p_square < 0.95  # gradients not saturated: the two methods can differ
    want = reference_cams(rgb, p_square)
    explainer = explain.explainer_for(model)
    got = {}
    for method in explain.METHODS:
        cams, _, _ = explainer.explain_batch(rgb[None].astype(np.float32), np.array([[1]]), method)
        got[method] = cams[0, 0]
        np.testing.assert_allclose(got[method], want[method], atol=1e-4)
        assert explain.peak_of(got[method]) in [(5, 2), (6, 2), (5, 3), (6, 3)]
    # Grad-CAM++ weighs the diffuse "dark" channel down (here 0.168 of the peak, not 0.265)
    assert np.abs(got["gradcam"] - got["gradcam++"]).max() > 0.05


@pytest.mark.parametrize("mode", pimages.RESIZE_MODES)
@pytest.mark.parametrize(
    ("height", "width", "top", "left"),
    [(90, 150, 20, 95), (150, 90, 100, 10), (300, 120, 40, 60)],
)
def test_peak_in_file_pixels_for_non_square_files(model, mode, height, width, top, left):
    size = 48 if max(height, width) == 300 else 40
    rgb = with_square(height, width, top, left, size)
    (result,) = explain.explain_images(model, [rgb], mode)
    assert result.heatmap.shape == (height, width)
    assert result.class_index == 1
    assert inside(result.peak, top, left, size), (result.peak, mode)


def test_class_without_evidence_is_empty_and_all_lists_every_class(model):
    rgb = with_square(32, 32, top=8, left=20, size=8)
    results = explain.explain_images(model, [rgb, rgb], "stretch", target="all")
    assert [r.class_index for r in results] == [0, 1, 0, 1]
    assert results[0].empty and not results[1].empty
    assert np.allclose(results[0].probabilities, results[1].probabilities)
    (forced,) = explain.explain_images(model, [rgb], "stretch", target=0)
    assert forced.class_index == 0 and forced.empty


def test_probabilities_match_predict_and_batches_do_not_mix(model):
    rgbs = [with_square(40 + 7 * i, 50, 5 + i, 10, 16) for i in range(5)]
    rgbs[2] = np.full((40, 50, 3), BACKGROUND, np.uint8)  # no square at all
    results = explain.explain_images(model, rgbs, "stretch", batch_size=2)
    one_by_one = [explain.explain_images(model, [r], "stretch")[0] for r in rgbs]
    inputs = np.stack([pimages.resize(r, INPUT, "stretch") for r in rgbs]).astype(np.float32)
    expected = model.predict(inputs, verbose=0)
    for got, alone, want in zip(results, one_by_one, expected, strict=True):
        np.testing.assert_allclose(got.probabilities, want, atol=1e-5)
        np.testing.assert_allclose(got.heatmap, alone.heatmap, atol=1e-5)
    assert results[2].class_index == 0


def test_reloaded_model_in_safe_mode_explains_the_same(model, tmp_path):
    path = tmp_path / "square.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    rgb = with_square(70, 45, 30, 5, 20)
    a = explain.explain_images(model, [rgb], "stretch")[0]
    b = explain.explain_images(loaded, [rgb], "stretch")[0]
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)
    assert a.peak == b.peak


def test_project_model_with_tiny_backbone(tmp_path):
    from petscan.model import network, saving

    params = tiny_model_params(resize="pad")
    full = network.build_full_model(params, 3, None)
    full.save(tmp_path / "model.keras")
    loaded = saving.load_model(tmp_path / "model.keras")
    layer, tensor = explain.find_target(loaded)
    assert layer.name == "tiny_backbone" and tuple(tensor.shape[1:3]) == (4, 4)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (57, 31, 3), dtype=np.uint8)
    results = explain.explain_images(loaded, [rgb], params.resize, "gradcam++", target="all")
    assert len(results) == 3
    for r in results:
        assert r.heatmap.shape == (57, 31)
        assert r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0
    np.testing.assert_allclose(results[0].probabilities.sum(), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("mode", "expected"), [("stretch", (137, 43)), ("pad", (137, 37))])
def test_feature_cell_lands_on_hand_computed_pixel(mode, expected):
    """Cell (row 3, col 5) of an 8 x 8 map of a 32 x 32 input, on a 100 x 200 file.

    Its centre is input (x, y) = (21.5, 13.5). stretch: x = 22 * 200 / 32 - 0.5 = 137,
    y = 14 * 100 / 32 - 0.5 = 43.25. pad: scale 0.16, the image fills 32 x 16 from input
    row 8, so y = (13.5 - 8 + 0.5) / 0.16 - 0.5 = 37.
    """
    cam = np.zeros((8, 8), np.float32)
    cam[3, 5] = 1.0
    heat = explain.to_image_grid(cam, (100, 200), INPUT, mode)
    assert heat.shape == (100, 200)
    assert explain.peak_of(heat) == expected
    # independent check: a dot drawn at the peak lands in that cell after images.resize
    col, row = expected
    dot = np.full((100, 200, 3), 255, np.uint8)
    dot[row - 2 : row + 3, col - 2 : col + 3] = 0
    small = 255.0 - pimages.resize(dot, INPUT, mode)[..., 0].astype(np.float64)
    ys, xs = np.indices(small.shape)
    centre = (np.sum(xs * small) / small.sum(), np.sum(ys * small) / small.sum())
    assert centre == pytest.approx((21.5, 13.5), abs=0.5)


def test_pad_margin_is_never_sampled():
    """In pad mode only the image's box is mapped back: a hot margin cell never shows."""
    cam = np.zeros((8, 8), np.float32)
    cam[0, :] = 1.0  # input rows 0..3: white margin for a wide file
    heat = explain.to_image_grid(cam, (100, 200), INPUT, "pad")
    assert heat.max() < 0.05  # the box starts at input row 8 (feature row 1.6 on)


def test_overlay_keeps_size_and_leaves_cold_pixels_alone():
    rgb = np.full((20, 30, 3), 200, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 5:10] = 1.0
    out = overlay(rgb, heat, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[15:, 15:] == 200).all()
    # jet at 1.0 is dark red (0.5, 0, 0): half of it blended with grey 200
    np.testing.assert_array_equal(out[7, 7], [164, 100, 100])
    with pytest.raises(ValueError, match="does not match"):
        overlay(rgb, heat[:10])


def test_bad_arguments_name_the_choices(model):
    rgb = with_square(32, 32, 8, 20, 8)
    with pytest.raises(ValueError, match="gradcam"):
        explain.explain_images(model, [rgb], "stretch", method="lime")
    with pytest.raises(ValueError, match="out of range"):
        explain.explain_images(model, [rgb], "stretch", target=7)
    with pytest.raises(ValueError, match="predicted"):
        explain.explain_images(model, [rgb], "stretch", target="best")


# ----------------------------------------------------------------------------- CLI

SQUARE_CLASSES = ["No square", "Square"]


@pytest.fixture(scope="module")
def square_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("square") / "model.keras"
    model.save(path)
    return path


def write_params(path, resize: str = "stretch"):
    import yaml

    params = {
        "data": {"classes": {"none": SQUARE_CLASSES[0], "square": SQUARE_CLASSES[1]}},
        "model": {"input_size": [224, 224], "resize": resize},  # the model's 32 x 32 wins
        "train": {"loss": {"alpha": [0.5, 0.5]}},  # one a class
    }
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def scans(tmp_path):
    """Two non-square files with a square (one nested, one JPEG-free RGBA), two bad files."""
    from conftest import write_png

    folder = tmp_path / "scans"
    write_png(folder / "wide.png", with_square(90, 150, 20, 95, 40))
    tall = np.dstack([with_square(150, 90, 100, 10, 40), np.full((150, 90), 255, np.uint8)])
    write_png(folder / "nested/tall.png", tall)
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    (folder / "empty.png").write_bytes(b"")
    return folder


SQUARES = {"wide.png": (20, 95, 40), "nested/tall.png": (100, 10, 40)}


@pytest.mark.parametrize("resize", pimages.RESIZE_MODES)
def test_cli_writes_overlays_and_an_index_in_file_pixels(
    square_file, scans, tmp_path, capsys, resize
):
    from PIL import Image

    out = tmp_path / "out"
    params = write_params(tmp_path / "params.yaml", resize)
    code = explain_cli.main(
        [str(scans), "--model", str(square_file), "--out", str(out), "--params", str(params)]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "empty.png" in err
    index = pd.read_csv(out / explain_cli.INDEX_FILE)
    assert list(index.columns) == list(explain_cli.INDEX_COLUMNS)
    assert len(index) == 2 and set(index["class"]) == {"Square"}
    for row in index.itertuples():
        relative = Path(row.file).relative_to(scans).as_posix()
        top, left, size = SQUARES[relative]
        assert inside((row.peak_col, row.peak_row), top, left, size), (relative, resize)
        with Image.open(out / row.overlay) as png:
            assert png.size == Image.open(row.file).size  # the image as it was given
    assert (out / "nested" / "tall_square.png").is_file()


def test_cli_all_classes_and_a_named_class(square_file, scans, tmp_path):
    params = write_params(tmp_path / "params.yaml")
    argv = [str(scans / "wide.png"), "--model", str(square_file), "--params", str(params)]
    assert explain_cli.main([*argv, "--out", str(tmp_path / "all"), "--class", "all"]) == 0
    index = pd.read_csv(tmp_path / "all" / explain_cli.INDEX_FILE)
    assert list(index["class"]) == SQUARE_CLASSES
    assert list(index["empty"]) == [True, False]
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        "wide_no-square.png",
        "wide_square.png",
    ]
    out = tmp_path / "named"
    named = ["--class", "no square", "--method", "gradcam++"]
    code = explain_cli.main([*argv, "--out", str(out), *named])
    assert code == 0
    index = pd.read_csv(out / explain_cli.INDEX_FILE)
    assert list(index["class"]) == ["No square"] and list(index["method"]) == ["gradcam++"]


def test_cli_usage_errors_and_nothing_explained(square_file, scans, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    base = ["--model", str(square_file), "--params", str(params), "--out", str(tmp_path / "o")]
    assert explain_cli.main([str(scans), *base, "--class", "Cat"]) == 1
    assert "unknown class 'Cat'" in capsys.readouterr().err
    assert explain_cli.main([str(scans / "broken.png"), *base]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "no image could be explained" in err
    missing = ["--model", str(tmp_path / "absent.keras"), "--out", str(tmp_path / "o")]
    assert explain_cli.main([str(scans), *missing, "--params", str(params)]) == 1
    assert "absent.keras" in capsys.readouterr().err


def test_cli_with_a_registered_mlflow_model(square_file, scans, tmp_path, mlflow_store):
    from petscan.params.schema import section
    from petscan.tracking import model_logging, runs

    mlflow_params = section(
        "mlflow", {"experiment": "explain-test", "registered_model": "square-explain"}
    )
    with runs.start_training_run(mlflow_params, {}, {}):
        model_logging.log_keras_model(
            square_file,
            mlflow_params,
            SQUARE_CLASSES,
            tiny_model_params(input_size=list(INPUT), resize="pad"),
            input_example=[str(scans / "wide.png")],
        )
    out = tmp_path / "uri"
    argv = [str(scans), "--model-uri", "models:/square-explain/1", "--out", str(out)]
    assert explain_cli.main([*argv, "--params", str(tmp_path / "absent.yaml")]) == 0
    index = pd.read_csv(out / explain_cli.INDEX_FILE)
    assert len(index) == 2
    for row in index.itertuples():
        top, left, size = SQUARES[Path(row.file).relative_to(scans).as_posix()]
        assert inside((row.peak_col, row.peak_row), top, left, size)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "size"),
    [("inception_resnet_v2", 75), ("inception_v3", 75), ("resnet50", 64), ("densenet121", 64)],
)
def test_every_known_backbone_reloaded(backbone, size, tmp_path):
    """The target is found from the structure of a saved and reloaded model, whatever the
    backbone's own layer names (which differ from process to process)."""
    from petscan.model import network, saving

    params = tiny_model_params(backbone=backbone, input_size=[size, size], resize="pad")
    network.build_full_model(params, 3, None).save(tmp_path / "model.keras")
    loaded = saving.load_model(tmp_path / "model.keras")
    layer, tensor = explain.find_target(loaded)
    assert isinstance(layer, keras.Model) and len(tensor.shape) == 4
    rgb = np.random.default_rng(1).integers(0, 255, (120, 70, 3), dtype=np.uint8)
    (result,) = explain.explain_images(loaded, [rgb], params.resize, method="gradcam++")
    assert result.heatmap.shape == (120, 70)
    proba = loaded.predict(pimages.resize(rgb, (size, size), "pad")[None].astype("float32"))
    np.testing.assert_allclose(result.probabilities, proba[0], atol=1e-5)
