"""Indexing and validating the labelled image folder (`data.raw_dir`).

Layout: one top-level folder per class (mapped to a class name by `data.classes`);
files in nested sub-folders belong to their top class folder, as the original
notebook flattened them. Every file is hashed and decoded once; unusable files are
reported with the reason and left out, so one broken export never stops a run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from petscan.data.folders import IMAGE_SUFFIXES, FolderScan, printable
from petscan.data.images import ImageError, ImageRules, read_image
from petscan.utils.errors import UserError
from petscan.utils.io import sha256_file

INDEX_COLUMNS = [
    "path",
    "folder",
    "class",
    "label",
    "patient",
    "patient_matched",
    "sha256",
    "size_bytes",
    "width",
    "height",
    "mode",
]
MB = 1024 * 1024


class DataError(UserError, ValueError):
    """The data folder cannot produce a usable split; the message says how to fix it."""


@dataclass
class DataIndex:
    """Usable images (one row each, sorted by path) and everything left out, with reasons."""

    images: pd.DataFrame
    class_names: list[str]
    raw_dir: Path
    location: str = ""  # `raw_dir` as the report shows it (relative to the root)
    bad_files: list[dict[str, str]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    ignored_folders: list[dict[str, Any]] = field(default_factory=list)
    link_problems: list[dict[str, str]] = field(default_factory=list)  # loops, broken links
    link_notes: list[dict[str, str]] = field(default_factory=list)  # followed, counted once

    @property
    def unmatched_patients(self) -> list[str]:
        """Paths whose file name did not match `data.patient_pattern`."""
        return self.images.loc[~self.images["patient_matched"], "path"].tolist()


def patient_of(stem: str, fallback: str, pattern: re.Pattern[str] | None) -> tuple[str, bool]:
    """(patient id, matched): the `patient` group of `pattern` searched in `stem`.

    Without a pattern, or when it does not match, the image is its own patient and
    `fallback` (the path under the data folder, unique) is its id.
    """
    if pattern is not None:
        match = pattern.search(stem)
        if match and match.group("patient"):
            return match.group("patient"), True
    return fallback, pattern is None


def relative_posix(path: Path, root: Path) -> str:
    """`path` relative to `root` in posix form (absolute when it lies outside `root`).

    Symlinks are not resolved: a DVC cache linked into `data/raw` keeps its
    workspace path. Bytes of a name that are not UTF-8 are shown as backslash escapes.
    """
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == ".." or rel.startswith(".." + os.sep):
        return printable(Path(os.path.abspath(path)).as_posix())
    return printable(Path(rel).as_posix())


def index_images(
    raw_dir: str | Path,
    classes: Mapping[str, str],
    patient_pattern: str | None = None,
    max_file_mb: float | None = None,
    max_pixels: int | None = None,
    root: str | Path | None = None,
    progress: bool = True,
    min_side: int | None = None,
    max_aspect: float | None = None,
) -> DataIndex:
    """Index, hash and decode every file under `raw_dir`.

    `classes` maps a top-level folder name to a class name (label order = first
    appearance, as `DataParams.class_names`); `patient_pattern` is `data.patient_pattern`
    (a regex with a group `patient`, checked by the schema). Folders not in `classes` are
    reported in `ignored_folders`; hidden files and folders are skipped silently; files with
    a non-image extension or outside any class folder go to `skipped_files`; files that
    cannot be used go to `bad_files`.
    Paths are relative to `root` (default: the working directory).
    """
    root = Path.cwd() if root is None else Path(root)
    raw = Path(raw_dir) if Path(raw_dir).is_absolute() else root / raw_dir
    if not raw.is_dir():
        raise DataError(
            f"data folder {raw_dir} does not exist: run `make data` to generate the synthetic "
            "demo set, or set data.raw_dir in params.yaml to your image folder"
        )
    pattern = None if patient_pattern is None else re.compile(patient_pattern)
    names = list(dict.fromkeys(classes.values()))
    index = DataIndex(
        images=pd.DataFrame(columns=INDEX_COLUMNS),
        class_names=names,
        raw_dir=raw,
        location=relative_posix(raw, root),
    )
    scans = class_scans(raw, classes)
    candidates = list(_class_files(raw, classes, root, index, scans))
    for name, scan in scans.items():
        _record_scan(scan, name, root, index)
    max_bytes = None if max_file_mb is None else int(max_file_mb * MB)
    rules = ImageRules(max_pixels, min_side, max_aspect)
    rows = []
    for folder, path in tqdm(
        candidates, desc=f"Indexing {raw_dir}", unit="file", disable=not progress
    ):
        row = _index_file(path, folder, classes[folder], raw, root, pattern, (max_bytes, rules))
        if "reason" in row:
            index.bad_files.append(row)
        else:
            row["label"] = names.index(row["class"])
            rows.append(row)
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS).astype(
        {
            "label": "int64",
            "patient_matched": bool,
            "size_bytes": "int64",
            "width": "int64",
            "height": "int64",
        }
    )
    index.images = frame.sort_values("path", kind="stable").reset_index(drop=True)
    return index


def class_scans(raw: Path, classes: Mapping[str, str]) -> dict[str, FolderScan]:
    """One `FolderScan` per class: a file is counted once per class that reaches it.

    A file reached from two classes (a link in one class's folder to a file or a folder of
    another class, or outside the data folder) is then indexed under both, and left out as
    a cross-class duplicate (same bytes), whatever the order of the folders.
    """
    folders = {
        name: [raw / f for f, c in classes.items() if c == name] for name in classes.values()
    }
    return {
        name: FolderScan(
            raw, others=tuple(p for other, paths in folders.items() if other != name for p in paths)
        )
        for name in folders
    }


def _record_scan(scan: FolderScan, class_name: str, root: Path, index: DataIndex) -> None:
    """Copy a class's link problems, notes and bad names into `index` (paths from `root`)."""
    for found, target in ((scan.problems, index.link_problems), (scan.notes, index.link_notes)):
        for entry in found:
            target.append(
                {
                    **entry,
                    "path": relative_posix(Path(entry["path"]), root),
                    **(
                        {"target": relative_posix(Path(entry["target"]), root)}
                        if "target" in entry
                        else {}
                    ),
                }
            )
    for entry in scan.bad_names:
        path = relative_posix(Path(entry["path"]), root)
        index.bad_files.append({"path": path, "class": class_name, "reason": entry["reason"]})


def _class_files(
    raw: Path,
    classes: Mapping[str, str],
    root: Path,
    index: DataIndex,
    scans: Mapping[str, FolderScan],
) -> Iterator[tuple[str, Path]]:
    """(class folder, file) for every candidate image; records what is skipped.

    Each real file is yielded once per class (`class_scans`); symbolic links follow the
    rules of `FolderScan`.
    """
    for entry in sorted(raw.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            index.skipped_files.append(
                {"path": relative_posix(entry, root), "reason": "not inside a class folder"}
            )
        elif entry.name not in classes:
            index.ignored_folders.append(
                {
                    "folder": relative_posix(entry, root),
                    "files": sum(1 for _ in _walk_files(entry)),
                    "reason": "folder not in data.classes",
                }
            )
        else:
            scan = scans[classes[entry.name]]
            files = scan.follow(entry) if entry.is_symlink() else scan.walk(entry)
            for path in files:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield entry.name, path
                else:
                    index.skipped_files.append(
                        {
                            "path": relative_posix(path, root),
                            "reason": f"extension {path.suffix or '(none)'!r} is not an image "
                            f"type ({', '.join(sorted(IMAGE_SUFFIXES))})",
                        }
                    )


def _walk_files(folder: Path) -> Iterator[Path]:
    """Files under `folder`, recursively, each real file once, hidden ones skipped."""
    scan = FolderScan(folder.parent)
    yield from scan.follow(folder) if folder.is_symlink() else scan.walk(folder)


def _index_file(
    path: Path,
    folder: str,
    class_name: str,
    raw: Path,
    root: Path,
    pattern: re.Pattern[str] | None,
    limits: tuple[int | None, ImageRules],
) -> dict[str, Any]:
    """One index row, or a bad-file entry {"path", "class", "reason"}.

    `limits`: (max bytes or None, the rules every image must pass: `images.read_image`).
    """
    max_bytes, rules = limits
    rel = relative_posix(path, root)
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageError(
                path,
                f"file too large: {size / MB:.1f} MB (limit split.max_file_mb = "
                f"{max_bytes / MB:g})",
            )
        info = read_image(path, rules)[1]
        digest = sha256_file(path)
    except ImageError as err:
        return {"path": rel, "class": class_name, "reason": err.reason}
    except OSError as err:
        return {"path": rel, "class": class_name, "reason": f"cannot read file ({err})"}
    patient, matched = patient_of(path.stem, path.relative_to(raw).as_posix(), pattern)
    return {
        "path": rel,
        "folder": folder,
        "class": class_name,
        "patient": patient,
        "patient_matched": matched,
        "sha256": digest,
        "size_bytes": size,
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
    }


def duplicate_groups(images: pd.DataFrame) -> list[dict[str, Any]]:
    """Files sharing the same bytes: [{"sha256", "classes", "paths"}], sorted by first path."""
    groups = []
    for digest, rows in images.groupby("sha256", sort=False):
        if len(rows) > 1:
            groups.append(
                {
                    "sha256": digest,
                    "classes": sorted(rows["class"].unique().tolist()),
                    "paths": sorted(rows["path"].tolist()),
                }
            )
    return sorted(groups, key=lambda group: group["paths"][0])


def drop_cross_class_duplicates(
    images: pd.DataFrame,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Remove every copy of a file found under two classes (its label is ambiguous)."""
    crossed = [group for group in duplicate_groups(images) if len(group["classes"]) > 1]
    bad_hashes = {group["sha256"] for group in crossed}
    kept = images[~images["sha256"].isin(bad_hashes)].reset_index(drop=True)
    return kept, crossed


def patients_in_several_classes(images: pd.DataFrame) -> list[dict[str, Any]]:
    """Patient ids found under more than one class (kept together by the group split)."""
    matched = images[images["patient_matched"]]
    classes = matched.groupby("patient")["class"].unique()
    return [
        {"patient": patient, "classes": sorted(values.tolist())}
        for patient, values in classes.items()
        if len(values) > 1
    ]


def group_ids(images: pd.DataFrame, by: tuple[str, ...] = ("patient", "sha256")) -> np.ndarray:
    """Connected groups of rows sharing a value in any of the `by` columns.

    Groups are numbered in order of their first row, so the numbering is stable.
    """
    n = len(images)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, nodes, offset = [], [], n
    for column in by:  # a bipartite graph: row -> one node per distinct value
        codes, uniques = pd.factorize(images[column])
        rows.append(np.arange(n))
        nodes.append(codes + offset)
        offset += len(uniques)
    edges = (np.concatenate(rows), np.concatenate(nodes))
    graph = coo_matrix((np.ones(len(edges[0])), edges), shape=(offset, offset))
    labels = connected_components(graph, directed=False)[1][:n]
    _, first = np.unique(labels, return_index=True)
    renumber = np.empty(labels.max() + 1, dtype=np.int64)
    renumber[labels[np.sort(first)]] = np.arange(len(first))
    return renumber[labels]


def check_classes(index: DataIndex, images: pd.DataFrame, classes: Mapping[str, str]) -> None:
    """Fail with a clear message when no image, or no image of some class, is usable."""
    if images.empty:
        raise DataError(
            f"no usable image under {index.raw_dir} ({len(index.bad_files)} bad, "
            f"{len(index.skipped_files)} skipped, {len(index.ignored_folders)} ignored folders; "
            "see the report): put one folder per class there, named as in data.classes in "
            "params.yaml, or run `make data` for the synthetic demo set"
        )
    present = set(images["class"])
    for name in index.class_names:
        if name in present:
            continue
        folders = [folder for folder, target in classes.items() if target == name]
        states = [_folder_state(index.raw_dir / folder) for folder in folders]
        where = ", ".join(
            f"{index.raw_dir / f} ({s})" for f, s in zip(folders, states, strict=True)
        )
        raise DataError(
            f"class {name!r} has no usable image: {where}. Add images of that class there, or "
            "remove the folder from data.classes in params.yaml"
        )


def _folder_state(folder: Path) -> str:
    if not folder.is_dir():
        return "folder missing"
    if not any(_walk_files(folder)):
        return "empty"
    return "every file is bad, skipped or a cross-class duplicate; see the report"
