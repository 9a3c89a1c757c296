"""The explain stage's gallery: a few test images per class, with their heatmaps.

Per true class, four slots (`GALLERY_SLOTS`): correct or wrong, most or least confident.
`write_gallery` writes one overlay PNG per filled slot (the heatmap of the predicted class)
and `gallery.csv`, which the plot stage draws into one figure (`plots.explanation_gallery`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from petscan.data.images import load_rgb
from petscan.evaluation.gradcam import explain_images
from petscan.evaluation.localization import file_key
from petscan.evaluation.overlay import overlay, slug, write_png
from petscan.handoff.results import GALLERY_FILE, GALLERY_SPLIT
from petscan.utils import io

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


def write_gallery(
    model: keras.Model,
    table: pd.DataFrame,
    class_names: Sequence[str],
    resize_mode: str,
    method: str,
    lesions: pd.DataFrame | None,
    gallery_dir: Path,
    root: Path,
) -> int:
    """Overlay PNGs (the predicted class's heatmap) of the chosen test images of `table`
    (the explain stage's rows), and gallery.csv: one row per slot, with the visible lesions
    as JSON for the figure. Returns the number of panels."""
    shutil.rmtree(gallery_dir, ignore_errors=True)
    gallery_dir.mkdir(parents=True)
    frame = table[table["split"] == GALLERY_SPLIT]
    rows = []
    for name, outcome, end, index in gallery_selection(frame, class_names):
        row: dict[str, Any] = {"true_class": name, "outcome": outcome, "confidence_end": end}
        if index is not None:
            item = frame.loc[index]
            rgb = load_rgb(root / item["path"])
            (result,) = explain_images(model, [rgb], resize_mode, method)
            panel = f"{slug(name)}_{outcome}_{end}.png"
            write_png(gallery_dir / panel, overlay(rgb, result.heatmap))
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
