"""Does the heatmap point at the lesion? Localization measured against the generator's truth.

The synthetic generator (`petscan generate`) records every lesion of every file in
`data/raw/.lesions.csv` (`lesion_records`): its centre and size in the file's pixels and
whether it is visible in that view. For each cancer image with at least one visible
lesion, and the heatmap of its *true* class:

- **pointing game** (Zhang et al. 2016): a hit when the heatmap's peak falls inside a
  visible lesion (its FWHM ellipse) widened by `explain.tolerance_mm` on every side;
- **energy inside**: the share of the heatmap's sum that lies inside those regions.

An empty heatmap (Grad-CAM finds no positive evidence for the class anywhere) scores a
miss and no energy; the share of such images is reported beside the scores.

Both are averaged over the images, with percentile bootstrap intervals that resample
patients, and computed the same way for two reference maps: a centre-of-body prior (a
Gaussian at the centroid of the body's silhouette, as wide as the body) and a random map
(uniform noise on the model's own feature grid, mapped to the file like a heatmap). A
model that "looks at the lesion" beats both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from petscan.data.images import load_rgb
from petscan.evaluation import metrics
from petscan.evaluation.gradcam import PREDICTED, explain_classes, explainer_for, to_image_grid
from petscan.handoff.ground_truth import LESIONS_FILE

BODY_BELOW = 250  # grey levels under this are body: the display's background is white (255)
MAPS = ("model", "centre_prior", "random")


def file_key(path: str | Path) -> str:
    """`<class folder>/<file name>`: how a manifest path and a lesions row are matched."""
    return "/".join(Path(path).parts[-2:])


def read_lesions(raw_dir: str | Path) -> tuple[pd.DataFrame | None, str | None]:
    """The visible lesions by file key, or (None, the reason there is no ground truth)."""
    path = Path(raw_dir) / LESIONS_FILE
    if not path.is_file():
        return None, (
            f"no lesion ground truth ({path} is missing): localization is measured only on "
            "the synthetic demo data (`petscan generate`)"
        )
    frame = pd.read_csv(path)
    needed = {"path", "col", "row", "radius_col", "radius_row", "px_per_mm_col", "visible"}
    missing = sorted(needed - set(frame.columns))
    if missing:
        return None, f"{path} lacks columns {missing}: regenerate it with `petscan generate`"
    frame["key"] = frame["path"].map(file_key)
    return frame, None


def lesion_mask(shape: Sequence[int], lesions: pd.DataFrame, tolerance_mm: float) -> np.ndarray:
    """Boolean (H, W): inside any lesion's FWHM ellipse widened by `tolerance_mm`."""
    height, width = int(shape[0]), int(shape[1])
    rows = np.arange(height, dtype=np.float64)[:, None]
    cols = np.arange(width, dtype=np.float64)[None, :]
    mask = np.zeros((height, width), dtype=bool)
    for lesion in lesions.itertuples():
        rc = lesion.radius_col + tolerance_mm * lesion.px_per_mm_col
        rr = lesion.radius_row + tolerance_mm * lesion.px_per_mm_row
        mask |= ((cols - lesion.col) / rc) ** 2 + ((rows - lesion.row) / rr) ** 2 <= 1.0
    return mask


def scores(heatmap: np.ndarray, mask: np.ndarray) -> tuple[bool, float]:
    """(peak inside the mask, share of the map's sum inside it); an empty map scores 0."""
    total = float(heatmap.sum())
    if total <= 0:
        return False, 0.0
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return bool(mask[row, col]), float(heatmap[mask].sum() / total)


def centre_prior(rgb: np.ndarray) -> np.ndarray:
    """A Gaussian at the centroid of the body silhouette, with the silhouette's spread."""
    grey = np.asarray(rgb)[..., :3].mean(axis=-1)
    body = grey < BODY_BELOW
    height, width = grey.shape
    rows, cols = np.nonzero(body)
    if len(rows) == 0:
        rows, cols = np.array([height / 2]), np.array([width / 2])
    cy, cx = rows.mean(), cols.mean()
    sy, sx = max(rows.std(), 1.0), max(cols.std(), 1.0)
    yy = (np.arange(height)[:, None] - cy) / sy
    xx = (np.arange(width)[None, :] - cx) / sx
    return np.exp(-0.5 * (yy**2 + xx**2)).astype(np.float32)


def random_map(
    rng: np.random.Generator,
    shape: Sequence[int],
    feature_size: Sequence[int],
    input_size: Sequence[int],
    resize_mode: str,
) -> np.ndarray:
    """Uniform noise on the model's feature grid, mapped to the file as heatmaps are."""
    cells = rng.random(tuple(int(v) for v in feature_size))
    return to_image_grid(cells, shape, input_size, resize_mode)


def image_scores(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    lesions: pd.DataFrame,
    tolerance_mm: float,
    rng: np.random.Generator,
    feature_size: Sequence[int],
    input_size: Sequence[int],
    resize_mode: str,
) -> dict[str, Any]:
    """Hit and energy of the model's heatmap and of both reference maps on one image."""
    visible = lesions[lesions["visible"].astype(bool)]
    mask = lesion_mask(heatmap.shape, visible, tolerance_mm)
    maps = {
        "model": heatmap,
        "centre_prior": centre_prior(rgb),
        "random": random_map(rng, heatmap.shape, feature_size, input_size, resize_mode),
    }
    row: dict[str, Any] = {
        "visible_lesions": len(visible),
        "lesion_area": float(mask.mean()),
        "model_empty": not bool(np.any(heatmap > 0)),  # no positive evidence for the class
    }
    for name, values in maps.items():
        hit, energy = scores(values, mask)
        row[f"{name}_hit"], row[f"{name}_energy"] = hit, energy
    return row


def explain_split(
    model: keras.Model,
    frame: pd.DataFrame,
    split: str,
    class_names: Sequence[str],
    resize_mode: str,
    method: str,
    batch_size: int,
    lesions: pd.DataFrame | None,
    tolerance_mm: float,
    rng: np.random.Generator,
    root: Path,
) -> list[dict[str, Any]]:
    """The rows of localization.csv for one split's manifest `frame` (read as strings).

    Per image: the predicted class and its heatmap's peak, the true class's probability and
    peak, and (when the ground truth has a visible lesion for it) `image_scores` of the
    true class's heatmap. Both heatmaps come from one forward pass, `batch_size` images at
    a time; `rng` draws the random reference maps, in image order.
    """
    explainer = explainer_for(model)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(frame), batch_size):
        chunk = frame.iloc[start : start + batch_size]
        rgbs = [load_rgb(root / path) for path in chunk["path"]]
        labels = chunk["label"].astype(int).to_numpy()
        codes = np.column_stack([np.full(len(chunk), PREDICTED), labels])
        results = explain_classes(model, rgbs, codes, resize_mode, method, batch_size)
        for rgb, (_, item), (predicted, true) in zip(rgbs, chunk.iterrows(), results, strict=True):
            row = {
                "split": split,
                "path": item["path"],
                "patient": item["patient"],
                "true_class": class_names[true.class_index],
                "predicted_class": class_names[predicted.class_index],
                "confidence": predicted.probability,
                "true_probability": true.probability,
                "peak_col": true.peak[0],
                "peak_row": true.peak[1],
                "predicted_peak_col": predicted.peak[0],
                "predicted_peak_row": predicted.peak[1],
            }
            own = None if lesions is None else lesions[lesions["key"] == file_key(item["path"])]
            if own is not None and own["visible"].astype(bool).any():
                row.update(
                    image_scores(
                        rgb,
                        true.heatmap,
                        own,
                        tolerance_mm,
                        rng,
                        explainer.feature_size,
                        explainer.input_size,
                        resize_mode,
                    )
                )
            rows.append(row)
    return rows


def summarize(
    frame: pd.DataFrame, n_resamples: int, confidence: float, seed: int
) -> dict[str, Any]:
    """Means and patient-bootstrap intervals of every map's hit rate and energy share,
    and of the model's advantage over each reference (paired: the same resampled images),
    and the share of images whose heatmap is empty (no positive evidence: a miss).
    """
    columns = {}
    if "model_empty" in frame:
        columns["model/empty_heatmaps"] = frame["model_empty"].to_numpy(dtype=float)
    for name in MAPS:
        columns[f"{name}/pointing_game"] = frame[f"{name}_hit"].to_numpy(dtype=float)
        columns[f"{name}/energy_inside"] = frame[f"{name}_energy"].to_numpy(dtype=float)
    for name in MAPS[1:]:
        for stat in ("pointing_game", "energy_inside"):
            columns[f"model_minus_{name}/{stat}"] = (
                columns[f"model/{stat}"] - columns[f"{name}/{stat}"]
            )
    values = np.column_stack(list(columns.values()))
    draws = np.array(
        [
            values[idx].mean(axis=0)
            for idx in metrics.resample_indices(
                len(frame), frame["patient"].astype(str).to_numpy(), n_resamples, seed
            )
        ]
    )
    out: dict[str, Any] = {
        "images": int(len(frame)),
        "patients": int(frame["patient"].nunique()),
        "lesion_area": float(frame["lesion_area"].mean()),
    }
    for k, name in enumerate(columns):
        low, high, _ = metrics.percentile_interval(draws[:, k], confidence)
        out[name] = float(values[:, k].mean())
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


HEADLINE = tuple(
    f"{source}/{score}"
    for source in ("model", "centre_prior", "random")
    for score in ("pointing_game", "energy_inside")
) + ("model/empty_heatmaps",)


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few localization numbers `dvc exp show` compares (point values; the intervals
    and paired differences stay in metrics_full.json and MLflow)."""
    summary = result["localization"] or {}
    return {
        "random_init": result["random_init"],
        "weights_label": result["weights_label"],
        "skipped": result["skipped"],
        "localization": {k: summary[k] for k in HEADLINE if k in summary},
    }
