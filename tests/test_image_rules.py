"""One rule of which images are usable (`images.read_image`, from split's params), applied
by split, predict and the scoring-server model alike (the web app: tests/test_app.py, the
served model: tests/test_serve.py); the decompression-bomb message names split.max_pixels;
an all-NaN image is one clear line, without NumPy warnings."""

from __future__ import annotations

import base64
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import png_header, refused_images, unique_png

from petscan.data.images import ImageError, ImageRules, read_image
from petscan.data.split import make_split
from petscan.params.schema import section
from petscan.pipeline.split import describe

DEFAULT_RULES = ImageRules.from_params(section("split"))


def test_the_rules_are_split_s_params_with_the_schema_s_defaults():
    assert ImageRules(max_pixels=50_000_000, min_side=32, max_aspect=8.0) == DEFAULT_RULES
    rules = ImageRules.from_params(section("split", {"min_side": 8, "max_pixels": None}))
    assert rules == ImageRules(None, 8, 8.0)


@pytest.mark.parametrize("name", ["dot", "line", "nan", "blank"])
def test_read_image_refuses_each_with_its_reason(tmp_path, name):
    path, reason = refused_images(tmp_path)[name]
    with pytest.raises(ImageError) as raised:
        read_image(path, DEFAULT_RULES)
    assert raised.value.reason == reason
    with pytest.raises(ImageError) as raised:
        read_image(path.read_bytes(), DEFAULT_RULES, "upload.png")
    assert raised.value.reason == reason and raised.value.path == "upload.png"


def test_split_refuses_them_with_one_line_each_and_no_numpy_warning(
    make_raw_dir, data_params, split_params
):
    raw = make_raw_dir({"No cancer": 10, "breast cancer": 10, "prostate cancer": 10})
    for k, path in enumerate(sorted(raw.glob("*/pt-*.png"))):
        unique_png(path, 5000 + k, size=40)  # the usable images: 40 x 40
    expected = {path.name: reason for path, reason in refused_images(raw / "No cancer").values()}
    split_params.update(min_side=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make_split(
            section("data", data_params),
            section("split", split_params),
            root=raw.parents[1],
            progress=False,
        )
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    bad = {entry["path"].rsplit("/", 1)[1]: entry["reason"] for entry in result.report["bad_files"]}
    assert bad == expected
    console = [line for line in describe(result) if "nan.tif" in line]
    assert console == [f"  bad: data/raw/No cancer/nan.tif: {expected['nan.tif']}"]


def test_some_nan_and_infinite_pixels_read_without_numpy_warnings():
    from PIL import Image

    from petscan.data.images import to_rgb

    values = np.array([[np.nan, np.inf, -np.inf], [0.0, 100.0, 200.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb(Image.fromarray(values))  # NaN -> 0, inf -> 200, -inf -> 0
    assert rgb[..., 0].tolist() == [[0, 200, 0], [0, 100, 200]]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from conftest import tiny_image_classifier

    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_image_classifier(seed=3).save(path)
    return path


def test_predict_refuses_what_split_refuses(keras_file, tmp_path, capsys):
    from petscan.serving import predict

    refused = refused_images(tmp_path / "scans")
    unique_png(tmp_path / "scans" / "good.png", 1, size=40)
    params = tmp_path / "params.yaml"  # no split section: the defaults, as split's
    params.write_text("data:\n  classes: {a: A, b: B, c: C}\n")
    argv = [str(tmp_path / "scans"), "--model", str(keras_file), "--params", str(params)]
    assert predict.main(argv) == 0
    captured = capsys.readouterr()
    skipped = sorted(line for line in captured.err.splitlines() if line.startswith("skipped"))
    assert skipped == sorted(f"skipped {path}: {reason}" for path, reason in refused.values())
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == [
        (tmp_path / "scans" / "good.png").as_posix()
    ]


def test_the_scoring_model_refuses_what_split_refuses(keras_file, tmp_path):
    """The pyfunc as `mlflow models serve` loads it: a model config without the shape rules
    (logged before they were) takes split's defaults."""
    from petscan.serving.pyfunc import KERAS_ARTIFACT, PetscanKerasModel

    refused = refused_images(tmp_path)
    model = PetscanKerasModel()
    config = {"class_names": ["A", "B", "C"], "input_size": [32, 32], "max_pixels": 1_000_000}
    model.load_context(SimpleNamespace(model_config=config, artifacts={KERAS_ARTIFACT: keras_file}))
    names = sorted(refused)
    rows = pd.DataFrame(
        {"image": [base64.b64encode(refused[n][0].read_bytes()).decode() for n in names]}
    )
    frame = model.predict(None, rows)
    assert frame["error"].tolist() == [
        f"row {k} image: {refused[n][1]}" for k, n in enumerate(names)
    ]
    assert frame["predicted_class"].isna().all()


@pytest.mark.parametrize(
    "max_pixels, reason",
    [
        (50_000_000, "too large: 400000000 pixels (limit split.max_pixels = 50000000)"),
        (
            None,
            "too large: 400000000 pixels (split.max_pixels is null: Pillow's "
            "decompression-bomb guard refuses it)",
        ),
    ],
)
def test_a_decompression_bomb_names_split_max_pixels(tmp_path, max_pixels, reason):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20_000, 20_000))  # above Pillow's own limit (2 x 89.5 M)
    with pytest.raises(ImageError) as raised:
        read_image(path, ImageRules(max_pixels=max_pixels))
    assert raised.value.reason == reason


def test_a_limit_above_pillow_s_warning_level_is_split_s_to_set(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(10_000, 10_000))  # 100 M: above Pillow's warning level
    with pytest.raises(ImageError) as raised:
        read_image(path, ImageRules(max_pixels=120_000_000))
    assert raised.value.reason.startswith("corrupt or truncated image"), "the size was allowed"
    with pytest.raises(ImageError) as raised:
        read_image(path, ImageRules(max_pixels=99_999_999))
    assert raised.value.reason == (
        "too large: 10000 x 10000 pixels (limit split.max_pixels = 99999999)"
    )
