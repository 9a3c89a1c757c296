"""Does the heatmap point at the lesion? Localization measured against the generator's truth.

The synthetic generator records every lesion of every file (`data/raw/.lesions.csv`, see
`synthetic.lesion_records`): its centre and size in the file's pixels and whether it is
visible in that view. For each cancer image with at least one visible lesion, and the
heatmap of its *true* class:

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

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from petscan.data.images import load_rgb
from petscan.evaluation import gradcam as explain
from petscan.evaluation import metrics
from petscan.handoff.records import read_train_info
from petscan.handoff.results import GALLERY_FILE, GALLERY_SPLIT, json_safe
from petscan.model import network as pmodel
from petscan.params import loading as config
from petscan.tracking import runs as tracking
from petscan.utils import io

BODY_BELOW = 250  # grey levels under this are body: the display's background is white (255)
MAPS = ("model", "centre_prior", "random")
LESIONS_FILE = ".lesions.csv"


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
    return explain.to_image_grid(cells, shape, input_size, resize_mode)


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


# ----------------------------------------------------------------------------- the stage

GALLERY_SLOTS = (
    ("correct", "high"),
    ("correct", "low"),
    ("wrong", "high"),
    ("wrong", "low"),
)


def gallery_selection(
    frame: pd.DataFrame, class_names: Sequence[str]
) -> list[tuple[str, str, str, int | None]]:
    """Per true class and slot (correct / wrong, most / least confident): a row index or None.

    Confidence is the probability of the predicted class. A group of one image fills only
    its "high" slot.
    """
    chosen: list[tuple[str, str, str, int | None]] = []
    for name in class_names:
        rows = frame[frame["true_class"] == name]
        for outcome, end in GALLERY_SLOTS:
            correct = rows["predicted_class"] == name
            group = rows[correct if outcome == "correct" else ~correct]
            order = group.sort_values(["confidence", "path"], ascending=[end == "low", True])
            index = None if order.empty else order.index[0]
            if end == "low" and len(group) < 2:
                index = None
            chosen.append((name, outcome, end, index))
    return chosen


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


def run_explain(params: dict[str, Any], root: str | Path = ".") -> dict[str, Any]:
    """The `explain` stage: localization on the explained splits, gallery panels, MLflow.

    `params` holds `data` (classes, raw_dir), `model.resize`, `explain`, `evaluate`
    (bootstrap_resamples, confidence), `mlflow`, `train.out_dir` and `split.out_dir`.
    Writes into `explain.out_dir`: metrics.json, localization.csv and gallery/ (overlay
    PNGs of chosen test images plus gallery.csv), and logs the metrics
    (`explain/...`) and files into the training run. Returns what metrics.json holds.
    """
    root = Path(root)
    p = params["explain"]
    class_names = config.class_names(params["data"])
    mode = params["model"]["resize"]
    method = explain.check_method(p["method"])
    out_dir = root / p["out_dir"]
    train_dir = root / params["train"]["out_dir"]
    info = read_train_info(train_dir)
    model = pmodel.load_model(train_dir / "model.keras")
    explainer = explain.explainer_for(model)
    lesions, skipped = read_lesions(root / params["data"]["raw_dir"])
    if skipped:
        print(f"explain: localization skipped: {skipped}")
    rng = np.random.default_rng(int(p["seed"]))
    rows: list[dict[str, Any]] = []
    for split in p["splits"]:
        frame = pd.read_csv(root / params["split"]["out_dir"] / f"{split}.csv", dtype=str)
        for start in range(0, len(frame), int(p["batch_size"])):
            chunk = frame.iloc[start : start + int(p["batch_size"])]
            rgbs = [load_rgb(root / path) for path in chunk["path"]]
            labels = chunk["label"].astype(int).to_numpy()
            codes = np.column_stack([np.full(len(chunk), explain.PREDICTED), labels])
            results = explain.explain_classes(
                model, rgbs, codes, mode, method, int(p["batch_size"])
            )
            for rgb, (_, item), (predicted, true) in zip(
                rgbs, chunk.iterrows(), results, strict=True
            ):
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
                            float(p["tolerance_mm"]),
                            rng,
                            explainer.feature_size,
                            explainer.input_size,
                            mode,
                        )
                    )
                rows.append(row)
    table = pd.DataFrame(rows)
    scored = table.dropna(subset=["model_hit"]) if "model_hit" in table else table.iloc[:0]
    if lesions is not None and scored.empty:
        skipped = "no explained image has a visible lesion in the ground truth"
    summary = None
    if not skipped:
        summary = summarize(
            scored,
            int(params["evaluate"]["bootstrap_resamples"]),
            float(params["evaluate"]["confidence"]),
            int(p["seed"]),
        )
    result = {
        **info.weights.to_dict(),
        "method": method,
        "heatmap_of": "true class",
        "splits": list(p["splits"]),
        "tolerance_mm": float(p["tolerance_mm"]),
        "localization": summary,
        "skipped": skipped,
    }
    io.write_csv(out_dir / "localization.csv", table)
    io.write_json(out_dir / "metrics_full.json", json_safe(result))
    io.write_json(out_dir / "metrics.json", json_safe(headline(result)))
    panels = write_gallery(
        model, table, p, class_names, mode, method, lesions, out_dir / "gallery", root
    )
    run_id = tracking.training_run_id(info.model_sha256, params["mlflow"])
    with tracking.resumed_run(run_id, params["mlflow"]) as active:
        if active is not None:
            if summary is not None:
                mlflow.log_metrics(
                    {f"explain/{k}": float(v) for k, v in summary.items() if np.isfinite(v)}
                )
            mlflow.set_tag("explain.localization", skipped or json.dumps(result["splits"]))
            for path in (out_dir / "metrics_full.json", out_dir / "localization.csv"):
                mlflow.log_artifact(str(path), artifact_path="reports/explain")
    print(f"explain: {len(table)} images explained, {panels} gallery panels")
    return result


def write_gallery(
    model: Any,
    table: pd.DataFrame,
    explain_params: dict[str, Any],
    class_names: Sequence[str],
    resize_mode: str,
    method: str,
    lesions: pd.DataFrame | None,
    gallery_dir: Path,
    root: Path,
) -> int:
    """Overlay PNGs (the predicted class's heatmap) of the chosen test images,
    and gallery.csv: one row per slot, with the visible lesions as JSON for the figure."""
    shutil.rmtree(gallery_dir, ignore_errors=True)
    gallery_dir.mkdir(parents=True)
    frame = table[table["split"] == GALLERY_SPLIT]
    rows = []
    for name, outcome, end, index in gallery_selection(frame, class_names):
        row: dict[str, Any] = {"true_class": name, "outcome": outcome, "confidence_end": end}
        if index is not None:
            item = frame.loc[index]
            rgb = load_rgb(root / item["path"])
            (result,) = explain.explain_images(model, [rgb], {"resize": resize_mode}, method)
            panel = f"{explain.slug(name)}_{outcome}_{end}.png"
            explain.write_png(gallery_dir / panel, explain.overlay(rgb, result.heatmap))
            visible = []
            if lesions is not None:
                own = lesions[(lesions["key"] == file_key(item["path"])) & lesions["visible"]]
                visible = own[["col", "row", "radius_col", "radius_row"]].values.tolist()
            row.update(
                panel=panel,
                path=item["path"],
                predicted_class=item["predicted_class"],
                confidence=item["confidence"],
                peak_col=result.peak[0],
                peak_row=result.peak[1],
                visible_lesions=json.dumps(visible),
            )
        rows.append(row)
    io.write_csv(gallery_dir / GALLERY_FILE, pd.DataFrame(rows))
    return sum("panel" in r for r in rows)
