"""The per-study sidecar table of `ingest` (`ingest.report`): one row per study.

For a study turned into views: its pseudonym, class folder, the SUV rule and scale factor
(mean, min and max over slices: they differ per frame with DecayCorrection NONE), where the
scan time came from, the uptake time, the voxel size read and resampled to, the view files
and their angles, notes (series left out, files skipped). For a study left out: `excluded`
and the one-line reason. No PatientID, name or date is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from petscan.utils.io import write_text

COLUMNS = (
    "study",
    "status",
    "reason",
    "pseudonym",
    "class_folder",
    "source",
    "units",
    "decay_correction",
    "rule",
    "scale_factor",
    "scale_factor_min",
    "scale_factor_max",
    "scan_time_source",
    "uptake_min",
    "voxel_mm_in",
    "voxel_mm",
    "shape",
    "views",
    "angles",
    "supplied_by_labels",
    "notes",
)


def write_report(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV (columns `COLUMNS`, sorted by study), written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["study"]):
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.9g}"
    return str(value)
