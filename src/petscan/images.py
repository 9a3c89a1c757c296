"""Reading image files into the RGB arrays the models expect.

Hospital exports are messy: 16-bit grey PNGs, palette images, RGBA screenshots,
CMYK JPEGs. `load_rgb` turns all of them into 8-bit RGB or raises `ImageError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from petscan.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
RESIZE_MODES = ("stretch", "pad")
# PIL modes `to_rgb` converts; anything else is reported as unusable.
GREY_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
PLAIN_MODES = ("RGB", "RGBX", "L", "P", "CMYK", "YCbCr", "1", "LAB", "HSV")
SUPPORTED_MODES = GREY_HIGH_DEPTH_MODES + ALPHA_MODES + PLAIN_MODES
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
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(name, f"too large: {width} x {height} pixels (limit {max_pixels})")
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
        raise _as_image_error(Path(name), err) from err
    return image


def _as_image_error(path: Path, err: Exception) -> ImageError:
    if isinstance(err, ImageError):
        return err
    if isinstance(err, UnidentifiedImageError):
        return ImageError(path, "not an image (unknown format)")
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(path, f"too large: {err}")
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
            return _grey_to_rgb(np.asarray(image, dtype=np.float64), mode)
        if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        if mode in PLAIN_MODES:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ImageError(path, f"cannot convert mode {mode!r} to RGB ({err})") from err
    raise ImageError(path, f"unsupported image mode {mode!r}")


def _grey_to_rgb(arr: np.ndarray, mode: str) -> np.ndarray:
    top = float(np.nanmax(arr)) if arr.size else 0.0
    if mode.startswith("I;16") or 255.0 < top <= 65535.0:
        peak = 65535.0
    elif top <= 255.0:
        peak = 255.0
    else:
        peak = top
    grey = np.clip(np.nan_to_num(arr) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
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


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, hidden files skipped.

    Each real file once; links are handled as `FolderScan` does (see `scan_images` for
    the list of links that were not followed).
    """
    return scan_images(folder)[0]


def scan_images(folder: str | Path) -> tuple[list[Path], list[dict[str, str]]]:
    """(image files, link problems) under `folder`: `FolderScan` with `folder` as boundary."""
    scan = FolderScan(Path(folder))
    files = [p for p in scan.walk(Path(folder)) if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files), scan.problems


@dataclass
class FolderScan:
    """Walk folders following symbolic links safely; each real file is yielded once.

    - a link that cannot be resolved (broken, or a loop of links) is a problem;
    - a folder link that points to the scanned folder, one of its ancestors, or a folder
      inside it is not followed (a loop, or files that are counted where they are);
    - a folder link leaving `boundary` is followed, and noted (`notes`), as is a folder
      reached twice through links from outside;
    - a file reached a second time (through a link) is not yielded again, and noted.
    File links leaving the folder are followed silently (a DVC cache linked in).
    Hidden files and folders are skipped. `problems` and `notes` hold
    {"path", "target", "reason"} with paths as found.
    """

    boundary: Path
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    _files: dict[Path, Path] = field(default_factory=dict)
    _dirs: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.boundary = Path(os.path.realpath(self.boundary))

    def walk(self, folder: Path) -> Iterator[Path]:
        """Files under `folder` (recursively, sorted by name within each folder)."""
        links: list[Path] = []
        for current, dirs, files in os.walk(folder, followlinks=False):
            here = Path(current)
            self._dirs.add(Path(os.path.realpath(here)))
            kept = []
            for name in sorted(d for d in dirs if not d.startswith(".")):
                (links if (here / name).is_symlink() else kept).append(here / name)
            dirs[:] = [p.name for p in kept]
            for name in sorted(f for f in files if not f.startswith(".")):
                path = here / name
                if path.is_symlink():
                    links.append(path)
                else:
                    yield from self._file(path, Path(os.path.realpath(path)))
        for link in sorted(links):
            yield from self.follow(link)

    def _file(self, path: Path, real: Path) -> Iterator[Path]:
        first = self._files.setdefault(real, path)
        if first is path:
            yield path
        else:
            self._note(self.notes, path, real, f"the same file as {first.as_posix()}: counted once")

    def follow(self, link: Path) -> Iterator[Path]:
        """The files reached through one symbolic link (file or folder), by the rules above."""
        try:
            real = link.resolve(strict=True)
        except (OSError, RuntimeError):
            self._note(self.problems, link, None, "broken symbolic link, or a loop of links")
            return
        if not real.is_dir():
            yield from self._file(link, real)
            return
        inside = real == self.boundary or real.is_relative_to(self.boundary)
        if inside or self.boundary.is_relative_to(real):
            reason = (
                "symbolic link loop: points to a folder that holds it; not followed"
                if _holds(real, link)
                else "points to a folder inside the scanned one: not followed (its files "
                "are counted where they are)"
            )
            self._note(self.problems, link, real, reason)
            return
        if real in self._dirs:
            self._note(self.problems, link, real, "symbolic link loop: folder already scanned")
            return
        self._note(self.notes, link, real, "symbolic link leaving the data folder: followed")
        yield from self.walk(link)

    @staticmethod
    def _note(where: list, path: Path, real: Path | None, reason: str) -> None:
        entry = {"path": path.as_posix(), "reason": reason}
        if real is not None:
            entry["target"] = real.as_posix()
        where.append(entry)


def _holds(folder: Path, link: Path) -> bool:
    """True when `link` lies inside `folder` (by real path of its parent)."""
    parent = Path(os.path.realpath(link.parent))
    return parent == folder or parent.is_relative_to(folder)
