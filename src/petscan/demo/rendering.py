"""Images of a synthetic patient: projection, scanner blur and noise, the viewer's display.

A view projects the patient's structures at a small angle around the body axis and takes
the maximum along each ray, as a maximum-intensity projection (MIP) does, in SUV-like
units. The projection is blurred to the scanner's resolution, gets Poisson noise, and is
shown as a viewer shows it: inverted grey (white background, dark uptake) in an SUV window,
then saved in one of the `FORMATS`. `lesion_records` measures where each lesion lands in the
file and how much it shows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from petscan.demo.anatomy import Anatomy
from petscan.demo.shapes import Blob

# (format name, probability): most files are 8-bit grey or RGB PNG, a minority odd ones.
FORMATS: tuple[tuple[str, float], ...] = (
    ("png-grey", 0.50),
    ("png-rgb", 0.22),
    ("png-rgba", 0.09),
    ("png-grey16", 0.08),
    ("jpeg-grey", 0.06),
    ("jpeg-rgb", 0.05),
)

DEFAULT_VISIBLE_CONTRAST = 0.1  # params synthetic.visible_contrast


class _Projector:
    """Anatomical (x, y, z) -> pixel (column, row) for one view."""

    def __init__(self, u, cx, top, y_top, angle, tilt, pivot):
        self.u, self.cx, self.top, self.y_top = u, cx, top, y_top
        self.cos, self.sin = np.cos(angle), np.sin(angle)
        self.tc, self.ts = np.cos(tilt), np.sin(tilt)
        self.pivot = pivot

    def __call__(self, x: float, y: float, z: float) -> tuple[float, float]:
        col = self.cx + (x * self.cos + z * self.sin) * self.u
        row = self.top + (y - self.y_top) * self.u
        dx, dy = col - self.pivot[0], row - self.pivot[1]
        return self.pivot[0] + dx * self.tc - dy * self.ts, self.pivot[
            1
        ] + dx * self.ts + dy * self.tc

    def half(self, rx: float, rz: float) -> float:
        """Projected semi-axis of an ellipsoid with semi-axes rx (across) and rz (depth)."""
        return float(np.hypot(rx * self.cos, rz * self.sin)) * self.u


def _window(img: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    h, w = img.shape
    x0, x1 = max(int(cx - rx), 0), min(int(np.ceil(cx + rx)) + 1, w)
    y0, y1 = max(int(cy - ry), 0), min(int(np.ceil(cy + ry)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
    return img[y0:y1, x0:x1], xs, ys


def _draw(img: np.ndarray, blob: Blob, proj: _Projector, value: float) -> None:
    """Max-combine one projected blob into `img` (a maximum-intensity projection)."""
    cx, cy = proj(blob.x, blob.y, blob.z)
    if blob.shape == "capsule":
        _draw_capsule(
            img,
            (cx, cy),
            proj(blob.x1, blob.y1, blob.z1),
            blob.rx * proj.u,
            blob.r1 * proj.u,
            value,
        )
        return
    rx, ry = max(proj.half(blob.rx, blob.rz), 0.35), max(blob.ry * proj.u, 0.35)
    reach = 3.5 if blob.shape == "gauss" else 1.0
    win = _window(img, cx, cy, rx * reach + 1, ry * reach + 1)
    if win is None:
        return
    sub, xs, ys = win
    r2 = (xs / rx) ** 2 + (ys / ry) ** 2
    if blob.shape == "gauss":
        profile = np.exp(-0.5 * r2)
    else:
        edge = np.clip((1.0 - np.sqrt(r2)) * min(rx, ry) + 0.5, 0.0, 1.0)
        if blob.shape == "ring":  # a wall brighter than the cavity it surrounds
            r = np.sqrt(r2)
            profile = edge * (0.6 + 0.4 * np.exp(-(((r - 0.78) / 0.2) ** 2)))
        else:
            profile = edge
    np.maximum(sub, (value * profile).astype(np.float32), out=sub)


def _draw_capsule(img, p0, p1, r0, r1, value) -> None:
    reach = max(r0, r1) + 1
    cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
    win = _window(img, cx, cy, abs(p1[0] - p0[0]) / 2 + reach, abs(p1[1] - p0[1]) / 2 + reach)
    if win is None:
        return
    sub, xs, ys = win
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(dx * dx + dy * dy, 1e-9)
    px, py = xs + cx - p0[0], ys + cy - p0[1]
    t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0)
    dist = np.hypot(px - t * dx, py - t * dy)
    radius = r0 + (r1 - r0) * t
    profile = np.clip(radius - dist + 0.5, 0.0, 1.0)
    np.maximum(sub, (value * profile).astype(np.float32), out=sub)


@dataclass(frozen=True)
class ViewSpec:
    """How one image of a patient is taken and saved."""

    height: int  # file pixels
    width: int
    upsample: float  # file rows per rendered row
    stretch: float  # file columns per file row of the rendered image (anisotropic display)
    angle_deg: float  # rotation about the body axis
    tilt_deg: float  # in-plane rotation of the patient on the table
    y_top: float  # anatomical level of the top of the image
    y_bottom: float
    shift: float  # horizontal offset of the body, fraction of the width
    counts: float
    window: float
    gamma: float
    fwhm_mm: float
    fmt: str
    quality: int


def draw_view(
    rng: np.random.Generator, anatomy: Anatomy, base_height: int, first: bool
) -> ViewSpec:
    """Random acquisition and export settings of one view; later views differ slightly."""
    sc = anatomy.scanner
    vertex = sc["vertex"] > 0.5
    height = int(round(base_height * rng.uniform(0.78, 1.3)))
    y_top = (rng.uniform(-0.03, 0.0) if vertex else rng.uniform(0.12, 0.16)) + rng.uniform(
        -0.01, 0.01
    )
    y_bottom = rng.uniform(0.97, 1.07)
    margin = rng.uniform(1.1, 1.5)  # white space beside the body
    aspect = 2 * anatomy.half_width * margin / ((y_bottom - y_top) * 1.02)
    stretch = rng.uniform(0.92, 1.08) if rng.random() < 0.3 else 1.0
    angle = rng.normal(0.0, 4.0) if first else rng.choice([-1, 1]) * rng.uniform(5.0, 22.0)
    names, probs = zip(*FORMATS, strict=True)
    return ViewSpec(
        height=height,
        width=max(16, int(round(height * aspect * stretch))),
        upsample=1.0 if rng.random() < 0.3 else rng.uniform(1.3, 2.4),
        stretch=float(stretch),
        angle_deg=float(angle),
        tilt_deg=float(rng.normal(0.0, 1.5)),
        y_top=float(y_top),
        y_bottom=float(y_bottom),
        shift=float(rng.uniform(-0.04, 0.04)),
        counts=sc["counts"] * rng.uniform(0.8, 1.25),
        window=sc["window"] * rng.uniform(0.9, 1.1),
        gamma=sc["gamma"],
        fwhm_mm=sc["fwhm_mm"],
        fmt=str(rng.choice(names, p=np.asarray(probs) / sum(probs))),
        quality=int(rng.integers(80, 96)),
    )


def render(
    rng: np.random.Generator,
    anatomy: Anatomy,
    view: ViewSpec,
    visible_contrast: float = DEFAULT_VISIBLE_CONTRAST,
) -> tuple[np.ndarray, dict, list[dict[str, Any]]]:
    """The displayed 8-bit grey image (file size) of one view, where the primary landed
    (the `.ground_truth.csv` columns) and every lesion's record (see `lesion_records`)."""
    rows = max(24, int(round(view.height / view.upsample)))
    cols = max(12, int(round(view.width / view.stretch / view.upsample)))
    u = rows / ((view.y_bottom - view.y_top) * 1.02)
    top = 0.01 * rows
    proj = _Projector(
        u=u,
        cx=cols * (0.5 + view.shift),
        top=top,
        y_top=view.y_top,
        angle=np.deg2rad(view.angle_deg),
        tilt=np.deg2rad(view.tilt_deg),
        pivot=(cols / 2, rows / 2),
    )
    body = np.zeros((rows, cols), np.float32)
    for blob in anatomy.outline:
        _draw(body, blob, proj, 1.0)
    lungs = np.zeros_like(body)
    for blob in anatomy.lungs:
        _draw(lungs, blob, proj, 1.0)
    thick = ndimage.gaussian_filter(body, sigma=0.025 * u)
    activity = anatomy.background * body * (0.55 + 0.6 * np.clip(thick, 0, 1))
    activity *= 1.0 - (1.0 - anatomy.lung_factor) * lungs
    # Lesions last: the projection is a maximum, so the drawing order does not change it.
    lesion_ids = {id(lesion.blob) for lesion in anatomy.lesions}
    for blob in anatomy.uptake:
        if id(blob) not in lesion_ids:
            _draw(activity, blob, proj, blob.value)
    without_lesions = activity.copy() if anatomy.lesions else activity
    for lesion in anatomy.lesions:
        _draw(activity, lesion.blob, proj, lesion.blob.value)
    px_mm = u / anatomy.scanner["mm_per_unit"]
    records = lesion_records(
        anatomy, view, proj, without_lesions, (rows, cols), px_mm, visible_contrast
    )
    activity = ndimage.gaussian_filter(activity, sigma=view.fwhm_mm / 2.355 * px_mm)
    counts = view.counts / max(px_mm * 4.0, 0.25) ** 2  # fewer counts in smaller pixels
    noisy = rng.poisson(np.clip(activity, 0, None) * counts).astype(np.float32) / counts
    noisy = ndimage.gaussian_filter(noisy, sigma=0.6)
    shade = np.clip(noisy / view.window, 0.0, 1.0) ** view.gamma
    grey = np.asarray(255.0 * (1.0 - shade), np.float32)
    image = Image.fromarray(np.round(grey).astype(np.uint8)).resize(
        (view.width, view.height), Image.Resampling.BILINEAR
    )
    where: dict[str, Any] = {}
    if anatomy.primary is not None:
        col, row = proj(*anatomy.primary)
        where = {
            "primary_col": int(round(col * view.width / cols)),
            "primary_row": int(round(row * view.height / rows)),
        }
    return np.asarray(image), where, records


def _shade(activity: np.ndarray, view: ViewSpec) -> np.ndarray:
    """Noise-free display values in [0, 1] (0 white, 1 full black), as `render` windows them."""
    return np.clip(activity / view.window, 0.0, 1.0) ** view.gamma


def lesion_records(
    anatomy: Anatomy,
    view: ViewSpec,
    proj: _Projector,
    without_lesions: np.ndarray,
    shape: tuple[int, int],
    px_mm: float,
    visible_contrast: float,
) -> list[dict[str, Any]]:
    """Where every lesion lands in the file's pixel grid, its size there, and its contrast.

    `col`, `row`: the lesion centre in file pixels (pixel centres at integers);
    `radius_col`, `radius_row`: half its FWHM in file pixels (files may be anisotropic);
    `contrast`: how much the lesion changes the noise-free display value (0 white .. 1
    black) at its centre, from the projection without it to the one with it, both blurred
    to the scanner's resolution. A lesion whose centre projects onto brighter uptake (a
    maximum-intensity projection keeps the larger value; e.g. a breast primary in front of
    a saturated myocardium, of which only a bulge at the edge may show), that lies outside
    the field of view or is too faint for the window scores 0 or little.
    `visible`: contrast >= `visible_contrast`.
    """
    rows, cols = shape
    sx, sy = view.width / cols, view.height / rows  # file pixels per rendered pixel
    blur = view.fwhm_mm / 2.355 * px_mm
    layers = []
    for lesion in anatomy.lesions:
        layer = np.zeros(shape, np.float32)
        _draw(layer, lesion.blob, proj, lesion.blob.value)
        layers.append(layer)
    records = []
    for k, lesion in enumerate(anatomy.lesions):
        col, row = proj(lesion.blob.x, lesion.blob.y, lesion.blob.z)
        radius = lesion.diam_mm / 2 * px_mm  # rendered pixels
        contrast = 0.0
        reach = int(np.ceil(radius + 4 * blur + 2))
        r0, r1 = max(int(row) - reach, 0), min(int(row) + reach + 2, rows)
        c0, c1 = max(int(col) - reach, 0), min(int(col) + reach + 2, cols)
        if r0 < r1 and c0 < c1:
            others = without_lesions[r0:r1, c0:c1].copy()
            for j, layer in enumerate(layers):
                if j != k:
                    np.maximum(others, layer[r0:r1, c0:c1], out=others)
            with_it = np.maximum(others, layers[k][r0:r1, c0:c1])
            diff = _shade(ndimage.gaussian_filter(with_it, blur), view) - _shade(
                ndimage.gaussian_filter(others, blur), view
            )
            at = np.array([[row - r0], [col - c0]])
            contrast = max(float(ndimage.map_coordinates(diff, at, order=1, mode="nearest")[0]), 0)
        records.append(
            {
                "lesion": k,
                "kind": lesion.kind,
                "col": round((col + 0.5) * sx - 0.5, 1),
                "row": round((row + 0.5) * sy - 0.5, 1),
                "diam_mm": round(lesion.diam_mm, 1),
                "radius_col": round(radius * sx, 2),
                "radius_row": round(radius * sy, 2),
                "px_per_mm_col": round(px_mm * sx, 4),
                "px_per_mm_row": round(px_mm * sy, 4),
                "suv": round(lesion.blob.value, 2),
                "contrast": round(contrast, 4),
                "in_view": bool(0 <= col < cols and 0 <= row < rows),
                "visible": contrast >= visible_contrast,
            }
        )
    return records


def encode(grey: np.ndarray, fmt: str, quality: int = 90) -> tuple[bytes, str]:
    """File bytes and extension of an 8-bit grey image in one of the `FORMATS`."""
    buffer = io.BytesIO()
    if fmt == "png-grey":
        Image.fromarray(grey, "L").save(buffer, format="PNG")
    elif fmt == "png-rgb":
        Image.fromarray(grey, "L").convert("RGB").save(buffer, format="PNG")
    elif fmt == "png-rgba":
        Image.fromarray(grey, "L").convert("RGBA").save(buffer, format="PNG")
    elif fmt == "png-grey16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, format="PNG")
    elif fmt in ("jpeg-grey", "jpeg-rgb"):
        image = Image.fromarray(grey, "L")
        image = image if fmt == "jpeg-grey" else image.convert("RGB")
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), ".jpg"
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {[f for f, _ in FORMATS]}")
    return buffer.getvalue(), ".png"
