"""The labels table (`ingest.labels`): the only source of a study's class.

A CSV with a header row and a `class` column, keyed by `study` (the name of the study's
folder or NIfTI file under `ingest.source_dir`) or by `patient` (the PatientID), or both.
A class is a class folder of `data.classes` (`breast cancer`) or a class name (`Breast
cancer`). Optional columns supply what a study's headers lack or get wrong, and override
them (the report says so): `weight_kg`, `dose_bq`, `half_life_s`, `injection_time`
(DICOM DT, YYYYMMDDHHMMSS) and, for NIfTI in Bq/ml, `scan_time`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from petscan.utils.errors import BadInputError, MissingInputError

SUPPLIED = ("weight_kg", "dose_bq", "half_life_s", "injection_time", "scan_time")
NUMBERS = ("weight_kg", "dose_bq", "half_life_s")


@dataclass(frozen=True)
class Label:
    folder: str  # the class folder under data.raw_dir / ingest.out_dir
    supplied: dict[str, str] = field(default_factory=dict)  # column -> value (non-empty)
    patient: str | None = None


@dataclass
class LabelsTable:
    by_study: dict[str, Label]
    by_patient: dict[str, Label]

    def find(self, study: str, patient_id: str | None) -> Label | None:
        """The row of `study`, else of its PatientID, else None (the study is left out)."""
        if study in self.by_study:
            return self.by_study[study]
        if patient_id and patient_id in self.by_patient:
            return self.by_patient[patient_id]
        return None


def read_labels(path: str | Path, classes: dict[str, str]) -> LabelsTable:
    """Read and check the whole table; a problem is one line naming the file, row and fix."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{path}: no labels table (ingest.labels): a CSV with columns study (or patient) "
            "and class; `petscan generate --volumes` writes one for the synthetic volumes"
        )
    folders = {
        **{name: folder for folder, name in reversed(classes.items())},
        **{f: f for f in classes},
    }
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0]) if rows else set()
    if "class" not in columns or not columns & {"study", "patient"}:
        raise BadInputError(f"{path}: needs a class column and a study or patient column")
    table = LabelsTable({}, {})
    for line, row in enumerate(rows, start=2):
        name = (row.get("class") or "").strip()
        if name not in folders:
            raise BadInputError(
                f"{path}:{line}: class {name!r} is not in data.classes (folders or names: "
                f"{', '.join(sorted(folders))})"
            )
        supplied = {c: row[c].strip() for c in SUPPLIED if (row.get(c) or "").strip()}
        for column in NUMBERS:
            if column in supplied:
                try:
                    float(supplied[column])
                except ValueError:
                    raise BadInputError(
                        f"{path}:{line}: {column} = {supplied[column]!r} is not a number"
                    ) from None
        patient = (row.get("patient") or "").strip() or None
        label = Label(folders[name], supplied, patient)
        for key, index in (
            ((row.get("study") or "").strip(), table.by_study),
            (patient, table.by_patient),
        ):
            if key:
                if key in index and index[key].folder != label.folder:
                    raise BadInputError(f"{path}:{line}: {key} has two classes in the labels table")
                index[key] = label
    return table
