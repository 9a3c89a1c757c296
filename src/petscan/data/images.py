"""Reading image files into the RGB arrays the models expect.

Hospital exports are messy: 16-bit grey PNGs, palette images, RGBA screenshots,
CMYK JPEGs. `load_rgb` turns all of them into 8-bit RGB or raises `ImageError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from petscan.utils.errors import UserError

if TYPE_CHECKING:
    from petscan.params.inputs import SplitParams

RESIZE_MODES = ("stretch", "pad")
# PIL modes `to_rgb` converts; anything else is reported as unusable.
GREY_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
PLAIN_MODES = ("RGB", "RGBX", "L", "P", "CMYK", "YCbCr", "1", "LAB", "HSV")
# Never read a truncated file as if it were whole.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(UserError, ValueError):
    """An image file that cannot be used, with the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageInfo(NamedTuple):
    """What `inspect_image` learns about a usable file."""

    width: int
    height: int
    mode: str


@dataclass(frozen=True)
class ImageRules:
    """Which images are usable: params `split.max_pixels`, `split.min_side`, `split.max_aspect`
    (None: no limit). `read_image` applies them for split, predict, the scoring server and
    the web app alike."""

    max_pixels: int | None = None
    min_side: int | None = None
    max_aspect: float | None = None

    @classmethod
    def from_params(cls, split: SplitParams) -> ImageRules:
        """The rules of a `split` section (`schema.section("split", values)` fills in the
        defaults of a partial one)."""
        return cls(split.max_pixels, split.min_side, split.max_aspect)


def read_image(
    source: str | Path | bytes, rules: ImageRules, name: str | Path | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """(8-bit RGB (H, W, 3), header facts) of a usable image, else `ImageError` with the reason.

    The one acceptance rule: the file decodes (one frame, at most `rules.max_pixels`,
    checked from the header), its sides fit `rules.min_side` / `rules.max_aspect`, it has
    finite pixel values and is not blank (one value everywhere: nothing to classify).
    `source` is a file, or the bytes of an upload named `name` in messages.
    """
    if isinstance(source, bytes):
        name = "upload" if name is None else name
        image = open_bytes(source, str(name), max_pixels=rules.max_pixels)
    else:
        name = source if name is None else name
        image = open_image(source, max_pixels=rules.max_pixels)
    try:
        info = ImageInfo(image.width, image.height, image.mode)
        check_shape(name, info.width, info.height, rules.min_side, rules.max_aspect)
        rgb = to_rgb(image, name)
    finally:
        image.close()
    low, high = rgb.min(axis=(0, 1)), rgb.max(axis=(0, 1))  # per channel, no big temporaries
    if (low == high).all():
        colour = tuple(int(v) for v in low)
        raise ImageError(
            name, f"blank: every pixel is the same colour {colour}; nothing to classify"
        )
    return rgb, info


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode `path`, raising `ImageError` on anything unusable.

    The pixel count is checked from the header, before any pixel is decoded, so a
    file claiming absurd dimensions costs nothing.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageError(path, f"cannot read file ({err.strerror})") from err
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    return _decode(path, path, max_pixels)


def open_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """`open_image` for the bytes of an uploaded file; errors name it `name`."""
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | BinaryIO, name: str | Path, max_pixels: int | None) -> Image.Image:
    image = None
    try:
        with warnings.catch_warnings():
            # with a limit of our own, Pillow's lower warning threshold is not ours to apply
            action = "error" if max_pixels is None else "ignore"
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(name, f"too large: {width} x {height} pixels{_limit(max_pixels)}")
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise ImageError(
                    name,
                    f"{frames} frames (an animation or a stack of images); only single images "
                    "are used: export the one 2D image",
                )
            image.load()
    except Exception as err:
        if image is not None:
            image.close()
        raise _as_image_error(Path(name), err, max_pixels) from err
    return image


def _limit(max_pixels: int | None) -> str:
    if max_pixels is None:
        return " (split.max_pixels is null: Pillow's decompression-bomb guard refuses it)"
    return f" (limit split.max_pixels = {max_pixels})"


def _as_image_error(path: Path, err: Exception, max_pixels: int | None = None) -> ImageError:
    if isinstance(err, ImageError):
        return err
    if isinstance(err, UnidentifiedImageError):
        return ImageError(path, "not an image (unknown format)")
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        # Pillow refused it from the header: "Image size (<n> pixels) exceeds limit of ..."
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found[1])} pixels" if found else "more pixels than Pillow decodes"
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and found and int(found[1]) <= max_pixels:
            return ImageError(
                path,
                f"too large: {pixels}, above Pillow's decompression-bomb limit of {ceiling} "
                f"(split.max_pixels = {max_pixels} is higher: lower it to at most {ceiling})",
            )
        return ImageError(path, f"too large: {pixels}{_limit(max_pixels)}")
    if isinstance(err, PermissionError):
        return ImageError(path, f"cannot read file ({err.strerror})")
    if isinstance(err, OSError | SyntaxError | ValueError | EOFError):
        return ImageError(path, f"corrupt or truncated image ({err})")
    return ImageError(path, f"cannot decode ({type(err).__name__}: {err})")


def check_shape(
    path: str | Path, width: int, height: int, min_side: int | None, max_aspect: float | None
) -> None:
    """ImageError when a side is below `min_side` or the aspect ratio above `max_aspect`
    (params `split.min_side`, `split.max_aspect`): such a file is no whole-body image."""
    if min_side is not None and min(width, height) < min_side:
        raise ImageError(
            path, f"too small: {width} x {height} pixels (split.min_side = {min_side})"
        )
    ratio = max(width, height) / max(1, min(width, height))
    if max_aspect is not None and ratio > max_aspect:
        raise ImageError(
            path,
            f"too elongated: {width} x {height} pixels, aspect ratio {ratio:.1f} "
            f"(split.max_aspect = {max_aspect:g})",
        )


def inspect_image(path: str | Path, max_pixels: int | None = None) -> ImageInfo:
    """Check that `path` decodes to RGB (the loaders' own path) and return its header facts."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        info = ImageInfo(image.width, image.height, image.mode)
        to_rgb(image, path)
    finally:
        image.close()
    return info


def to_rgb(image: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """8-bit RGB array (H, W, 3) from any supported PIL mode.

    16-bit grey (`I;16*`) is scaled by 65535; 32-bit `I`/`F` by 255 when its values
    fit in 8 bits, by 65535 when they fit in 16 bits, else by its maximum. Alpha is
    composited onto white (the background of an inverted-grey PET display).
    """
    mode = image.mode
    try:
        if mode in GREY_HIGH_DEPTH_MODES:
            values = np.asarray(image, dtype=np.float64)
            if mode == "F" and values.size and not np.isfinite(values).any():
                raise ImageError(
                    path, "no finite pixel value (every pixel is NaN or infinite): nothing to read"
                )
            return _grey_to_rgb(values, mode)
        if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        if mode in PLAIN_MODES:
            return np.asarray(image.convert("RGB"))
    except ImageError:
        raise
    except (OSError, ValueError) as err:
        raise ImageError(path, f"cannot convert mode {mode!r} to RGB ({err})") from err
    raise ImageError(path, f"unsupported image mode {mode!r}")


def _grey_to_rgb(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":  # NaN reads as 0, +/-inf as the extreme finite values: no NumPy warnings
        finite = arr[np.isfinite(arr)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        arr = np.nan_to_num(arr, nan=0.0, posinf=high, neginf=low)
    top = float(arr.max()) if arr.size else 0.0
    if mode.startswith("I;16") or 255.0 < top <= 65535.0:
        peak = 65535.0
    elif top <= 255.0:
        peak = 255.0
    else:
        peak = top
    grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def load_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode `path` to an 8-bit RGB array (H, W, 3)."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        return to_rgb(image, path)
    finally:
        image.close()


def load_rgb_bytes(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode the bytes of an image file (e.g. an upload) to 8-bit RGB (H, W, 3)."""
    image = open_bytes(data, name, max_pixels=max_pixels)
    try:
        return to_rgb(image, name)
    finally:
        image.close()


def resize(rgb: np.ndarray, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resize an RGB array to (height, width).

    `stretch` ignores the aspect ratio, as the original notebook did; `pad` keeps it
    and fills the margin with white, the background of an inverted-grey PET display.
    """
    height, width = int(size[0]), int(size[1])
    image = Image.fromarray(rgb)
    left, top, new_w, new_h = content_box(image.height, image.width, (height, width), mode)
    if mode == "stretch":
        return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (left, top))
    return np.asarray(canvas)


def content_box(
    image_height: int, image_width: int, size: tuple[int, int], mode: str = "stretch"
) -> tuple[int, int, int, int]:
    """Where `resize` puts an image inside the (height, width) model input.

    Returns (left, top, width, height) of the resized image in the input grid: the whole
    input for `stretch`, the centred, aspect-preserving box for `pad` (the rest is white).
    """
    height, width = int(size[0]), int(size[1])
    if mode == "stretch":
        return 0, 0, width, height
    if mode == "pad":
        scale = min(width / image_width, height / image_height)
        new_w = max(1, round(image_width * scale))
        new_h = max(1, round(image_height * scale))
        return (width - new_w) // 2, (height - new_h) // 2, new_w, new_h
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


def load_resized(path: str | Path, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Decode and resize one file: float32 (H, W, 3) in [0, 255], as the models take it."""
    return resize(load_rgb(path), size, mode).astype(np.float32)
