"""Reading image files into the RGB arrays the models expect.

Hospital exports are messy: 16-bit grey PNGs, palette images, RGBA screenshots,
CMYK JPEGs. `load_rgb` turns all of them into 8-bit RGB or raises `ImageError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
RESIZE_MODES = ("stretch", "pad")
# Never read a truncated file as if it were whole.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An image file that cannot be used, with the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode `path`, raising `ImageError` on anything unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageError(path, f"cannot read file ({err.strerror})") from err
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(path, f"too large: {width} x {height} pixels (limit {max_pixels})")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(path, "not an image (unknown format)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(path, f"too large: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(path, f"corrupt or truncated image ({err})") from err
    return image


def to_rgb(image: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """8-bit RGB array (H, W, 3) from any PIL mode; alpha is composited onto white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode in ("I", "F") and arr.max() <= 255:
            peak = 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode in ("RGB", "L", "P", "CMYK", "YCbCr", "1", "LAB", "HSV"):
        return np.asarray(image.convert("RGB"))
    raise ImageError(path, f"unsupported image mode {mode!r}")


def load_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode `path` to an 8-bit RGB array (H, W, 3)."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        return to_rgb(image, path)
    finally:
        image.close()


def resize(rgb: np.ndarray, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resize an RGB array to (height, width).

    `stretch` ignores the aspect ratio, as the original notebook did; `pad` keeps it
    and fills the margin with white, the background of an inverted-grey PET display.
    """
    height, width = int(size[0]), int(size[1])
    image = Image.fromarray(rgb)
    if mode == "stretch":
        return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    if mode == "pad":
        scale = min(width / image.width, height / image.height)
        new_w = max(1, round(image.width * scale))
        new_h = max(1, round(image.height * scale))
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(
            image.resize((new_w, new_h), Image.Resampling.BILINEAR),
            ((width - new_w) // 2, (height - new_h) // 2),
        )
        return np.asarray(canvas)
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


def load_resized(path: str | Path, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Decode and resize one file: float32 (H, W, 3) in [0, 255], as the models take it."""
    return resize(load_rgb(path), size, mode).astype(np.float32)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, hidden files skipped."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
