"""images.py: every PIL mode to the right 8-bit RGB values, bad files named, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import png_header
from PIL import Image

from petscan.data.folders import list_images
from petscan.data.images import (
    ImageError,
    inspect_image,
    load_resized,
    load_rgb,
    resize,
    to_rgb,
)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_grey_8bit_repeats_into_three_channels(tmp_path):
    path = save(
        Image.fromarray(np.array([[0, 17], [128, 255]], dtype=np.uint8)), tmp_path / "g.png"
    )
    rgb = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 17], [128, 255]])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_grey_16bit_scales_65535_to_255(tmp_path):
    values = np.array([[0, 257], [32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    rgb = load_rgb(path)
    # round(v / 65535 * 255): 0, 1, 127.5 -> 128, 255
    np.testing.assert_array_equal(rgb[..., 1], [[0, 1], [128, 255]])


def test_32bit_int_and_float_grey():
    assert to_rgb(Image.new("I", (1, 1), 200))[0, 0].tolist() == [200, 200, 200]
    assert to_rgb(Image.new("I", (1, 1), 65535))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb(Image.new("F", (1, 1), 100.0))[0, 0].tolist() == [100, 100, 100]


def test_rgba_alpha_is_composited_on_white(tmp_path):
    pixels = np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255]], [[0, 0, 0, 128], [10, 20, 30, 255]]], dtype=np.uint8
    )
    rgb = load_rgb(save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png"))
    assert rgb[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert rgb[0, 1].tolist() == [0, 0, 255]  # opaque -> its own colour
    assert rgb[1, 1].tolist() == [10, 20, 30]
    # black at alpha 128 over white: 255 * (1 - 128/255) = 127
    np.testing.assert_allclose(rgb[1, 0], [127, 127, 127], atol=1)


def test_grey_with_alpha(tmp_path):
    image = Image.new("LA", (1, 2))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((0, 1), (50, 255))
    rgb = load_rgb(save(image, tmp_path / "la.png"))
    assert rgb[:, 0].tolist() == [[255, 255, 255], [50, 50, 50]]


def test_palette_with_and_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    rgb = load_rgb(save(image, tmp_path / "p.png"))
    assert rgb[0].tolist() == [[0, 0, 0], [255, 0, 0]]
    transparent = load_rgb(save(image, tmp_path / "pt.png", transparency=0))
    assert transparent[0].tolist() == [[255, 255, 255], [255, 0, 0]]


def test_cmyk_jpeg_is_converted(tmp_path):
    image = Image.new("CMYK", (8, 8), (0, 255, 0, 0))  # full magenta ink
    path = save(image, tmp_path / "c.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_allclose(load_rgb(path)[4, 4], [255, 0, 255], atol=3)


def test_one_bit_image(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    assert load_rgb(save(image, tmp_path / "b.png"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"patient notes, not a picture\n", "not an image"),
        ("truncated", "truncated"),
        (png_header(100_000, 100_000), "too large"),
    ],
)
def test_bad_files_raise_image_error_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    if content == "truncated":
        save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as caught:
        load_rgb(path)
    assert caught.value.path == str(path)
    assert reason in caught.value.reason


def test_max_pixels_is_checked_from_the_header(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_header(5000, 5000))  # no pixel data: decoding would fail differently
    with pytest.raises(
        ImageError, match=r"too large: 5000 x 5000 pixels \(limit split.max_pixels = 1000000\)"
    ):
        load_rgb(path, max_pixels=1_000_000)


def test_unsupported_mode_is_an_image_error():
    image = Image.new("RGB", (1, 1))
    image._mode = "XYZ"  # a mode no loader knows
    with pytest.raises(ImageError, match="unsupported image mode 'XYZ'"):
        to_rgb(image, "x.png")


def test_inspect_image_reports_header_facts(tmp_path):
    path = save(Image.new("RGBA", (5, 3)), tmp_path / "r.png")
    info = inspect_image(path)
    assert (info.width, info.height, info.mode) == (5, 3, "RGBA")


def test_resize_stretch_ignores_aspect_ratio():
    rgb = np.zeros((10, 40, 3), dtype=np.uint8)
    out = resize(rgb, (16, 12), "stretch")
    assert out.shape == (16, 12, 3) and out.dtype == np.uint8
    assert out.max() == 0  # no padding added


def test_resize_pad_keeps_aspect_and_pads_white():
    rgb = np.zeros((10, 40, 3), dtype=np.uint8)  # 4:1 black strip
    out = resize(rgb, (20, 20), "pad")
    assert out.shape == (20, 20, 3)
    # scaled to 20 x 5 rows, centred: rows 0..6 and 12..19 white, rows 7..11 black
    assert (out[:7] == 255).all() and (out[12:] == 255).all()
    assert (out[8:11] == 0).all()


def test_resize_unknown_mode():
    with pytest.raises(ValueError, match="unknown resize mode 'crop'"):
        resize(np.zeros((2, 2, 3), np.uint8), (4, 4), "crop")


def test_load_resized_is_float32_in_0_255(tmp_path):
    path = save(Image.new("L", (30, 10), 255), tmp_path / "w.png")
    out = load_resized(path, (8, 8), "pad")
    assert out.dtype == np.float32 and out.shape == (8, 8, 3)
    assert out.min() == 255.0 and out.max() == 255.0  # white image on white padding


def test_list_images_skips_hidden_and_other_files(tmp_path):
    for name in ("a.png", "sub/b.JPG", ".hidden.png", ".cache/c.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.png",
        "sub/b.JPG",
    ]
