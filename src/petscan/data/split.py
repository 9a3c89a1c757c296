"""Train / val / test split manifests from the indexed data folder.

Two modes (`split.mode`):

- `image` reproduces the original notebook: per class, files sorted and shuffled
  with `random.Random(seed)`, train = int(r0 * n), val = int(r1 * n), test = the
  rest (the split-folders `ratio` recipe). Images of one patient can land in
  different splits, which leaks near-copies into the test set.
- `group` (default) keeps every patient, and every set of byte-identical files,
  in one split, per-class counts as close to the same targets as group sizes allow.

In both modes byte-identical files never straddle splits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petscan.data.index import (
    DataError,
    DataIndex,
    check_classes,
    drop_cross_class_duplicates,
    duplicate_groups,
    group_ids,
    index_images,
    patients_in_several_classes,
)
from petscan.handoff.manifests import MANIFEST_COLUMNS, SPLITS
from petscan.utils import io

log = logging.getLogger(__name__)

MODES = ("group", "image")


@dataclass
class SplitResult:
    """The indexed images with their `split` and `group` columns, plus summary and report."""

    images: pd.DataFrame
    summary: dict[str, Any]
    report: dict[str, Any]

    def manifest(self, split: str) -> pd.DataFrame:
        """Rows of one split in the manifest format, sorted by path."""
        rows = self.images[self.images["split"] == split]
        rows = rows[list(MANIFEST_COLUMNS)].sort_values("path", kind="stable")
        return rows.reset_index(drop=True)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate `split.ratios`: three non-negative numbers summing to 1."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"params.yaml split.ratios must be three non-negative numbers (train, val, test) "
            f"summing to 1, got {list(ratios)}"
        )
    return values  # type: ignore[return-value]


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Per-class targets as the seed computed them: int(r0 n), int(r1 n), the rest.

    >>> split_counts(424, (0.9, 0.05, 0.05))
    (381, 21, 22)
    """
    r_train, r_val, _ = check_ratios(ratios)
    train, val = int(r_train * n), int(r_val * n)
    return train, val, n - train - val


def targets(
    images: pd.DataFrame, class_names: Sequence[str], ratios: Sequence[float]
) -> np.ndarray:
    """Target counts, shape (classes, 3), from the per-class totals of `images`."""
    totals = images["label"].value_counts().reindex(range(len(class_names)), fill_value=0)
    return np.array([split_counts(int(n), ratios) for n in totals], dtype=np.int64)


def image_split(images: pd.DataFrame, ratios: Sequence[float], seed: int) -> np.ndarray:
    """The seed's per-class split; byte-identical files move as one unit.

    Units (files sharing bytes) are ordered by file name, shuffled by
    `random.Random(seed)` per class and dealt to train until it holds int(r0 n)
    images, then to val until int(r1 n), then to test. Without duplicates this is
    exactly the seed's count per class.
    """
    assigned = np.empty(len(images), dtype=object)
    units = group_ids(images, by=("sha256",))
    names = images["path"].map(lambda p: Path(p).name)
    for _, rows in images.groupby("label", sort=True):
        order = rows.assign(_name=names[rows.index]).sort_values(["_name", "path"], kind="stable")
        unit_order = list(dict.fromkeys(units[order.index]))
        random.Random(seed).shuffle(unit_order)
        want = split_counts(len(rows), ratios)
        have = [0, 0, 0]
        for unit in unit_order:
            members = rows.index[units[rows.index] == unit]
            slot = next((s for s in (0, 1) if have[s] < want[s]), 2)
            assigned[members] = SPLITS[slot]
            have[slot] += len(members)
    return assigned


def group_split(
    images: pd.DataFrame,
    groups: np.ndarray,
    goal: np.ndarray,
    seed: int,
    restarts: int = 32,
) -> np.ndarray:
    """Assign whole groups to splits so per-class counts come close to `goal` (K, 3).

    Groups are visited in a seeded random order and each goes where it lowers the
    total absolute deviation from the targets most (ties: the split with the largest
    deficit, then the earlier split); a local search then moves or swaps groups while
    that deviation still drops. Groups of equal size and class make one move choice,
    so the search stays fast on thousands of patients. Up to `restarts` seeded orders
    are tried (stopping at a perfect fit); the first with the lowest deviation wins.
    """
    n_groups, n_classes = int(groups.max()) + 1, goal.shape[0]
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(counts, (groups, images["label"].to_numpy(dtype=np.int64)), 1)
    rng = np.random.default_rng(seed)
    best_slot, best_dev = None, None
    for _ in range(max(1, restarts)):
        slot, have = _greedy_refined(counts, goal, rng.permutation(n_groups))
        dev = _deviation(have, goal)
        if best_dev is None or dev < best_dev:
            best_slot, best_dev = slot, dev
        if dev == 0:
            break
    return np.array(SPLITS, dtype=object)[best_slot[groups]]


def _greedy_refined(
    counts: np.ndarray, goal: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    have = np.zeros_like(goal)
    slot = np.empty(len(counts), dtype=np.int64)
    for g in order:
        slot[g] = _best_slot(counts[g], have, goal)
        have[:, slot[g]] += counts[g]
    _refine(counts, slot, have, goal, order)
    return slot, have


def _deviation(column: np.ndarray, goal: np.ndarray) -> int:
    return int(np.abs(column - goal).sum())


def _best_slot(vec: np.ndarray, have: np.ndarray, goal: np.ndarray) -> int:
    def key(s: int) -> tuple[int, int, int]:
        change = _deviation(have[:, s] + vec, goal[:, s]) - _deviation(have[:, s], goal[:, s])
        deficit = int(vec @ (goal[:, s] - have[:, s]))
        return change, -deficit, s

    return min(range(goal.shape[1]), key=key)


def _refine(
    counts: np.ndarray,
    slot: np.ndarray,
    have: np.ndarray,
    goal: np.ndarray,
    order: np.ndarray,
    max_rounds: int = 100_000,
) -> None:
    """Best-improvement moves and swaps of groups until the deviation stops dropping."""
    n_splits = goal.shape[1]
    for _ in range(max_rounds):
        reps: dict[tuple[int, bytes], int] = {}
        for g in order[::-1]:  # the representative of a kind: the last one placed
            reps.setdefault((int(slot[g]), counts[g].tobytes()), int(g))
        kinds = list(reps.items())
        best_gain, best = 0, None
        for (s, _), g in kinds:
            for t in range(n_splits):
                if t != s:
                    gain = _gain(have, goal, s, t, counts[g])
                    if gain > best_gain:
                        best_gain, best = gain, ((g, t),)
        for i, ((s, key_a), g) in enumerate(kinds):
            for (t, key_b), h in kinds[i + 1 :]:
                if t != s and key_a != key_b:
                    gain = _gain(have, goal, s, t, counts[g] - counts[h])
                    if gain > best_gain:
                        best_gain, best = gain, ((g, t), (h, s))
        if best is None:
            return
        for g, t in best:
            have[:, slot[g]] -= counts[g]
            have[:, t] += counts[g]
            slot[g] = t


def _gain(have: np.ndarray, goal: np.ndarray, s: int, t: int, delta: np.ndarray) -> int:
    """Drop in deviation when `delta` (per class) moves from split `s` to split `t`."""
    before = _deviation(have[:, s], goal[:, s]) + _deviation(have[:, t], goal[:, t])
    after = _deviation(have[:, s] - delta, goal[:, s]) + _deviation(have[:, t] + delta, goal[:, t])
    return before - after


def make_split(
    data_params: dict[str, Any],
    split_params: dict[str, Any],
    root: str | Path | None = None,
    progress: bool = True,
) -> SplitResult:
    """Index `data.raw_dir`, drop what cannot be used and split the rest."""
    mode = split_params["mode"]
    if mode not in MODES:
        raise ValueError(f"params.yaml split.mode must be one of {MODES}, got {mode!r}")
    ratios = check_ratios(split_params["ratios"])
    seed = int(split_params["seed"])
    index = index_images(
        data_params["raw_dir"],
        data_params["classes"],
        patient_pattern=data_params["patient_pattern"],
        max_file_mb=split_params["max_file_mb"],
        max_pixels=split_params["max_pixels"],
        root=root,
        progress=progress,
        min_side=split_params["min_side"],
        max_aspect=split_params["max_aspect"],
    )
    duplicates = duplicate_groups(index.images)
    images, crossed = drop_cross_class_duplicates(index.images)
    try:
        check_classes(index, images, data_params["classes"])
    except DataError as err:
        err.report = {
            "mode": mode,
            "ratios": list(ratios),
            "seed": seed,
            **_left_out(index, crossed),
            "duplicate_groups": [g for g in duplicates if len(g["classes"]) == 1],
        }
        raise
    images = images.assign(group=group_ids(images))
    goal = targets(images, index.class_names, ratios)
    if mode == "image":
        images["split"] = image_split(images, ratios, seed)
    else:
        restarts = int(split_params["restarts"])
        images["split"] = group_split(images, images["group"].to_numpy(), goal, seed, restarts)
    check_no_leak(images)
    if mode == "group" and patients_across_splits(images):
        raise AssertionError("group split put a patient in two splits")
    summary = summarize(images, index, duplicates, crossed)
    report = build_report(images, index, duplicates, crossed, goal, mode, ratios, seed)
    return SplitResult(images=images, summary=summary, report=report)


def check_no_leak(images: pd.DataFrame) -> None:
    """Byte-identical files must share a split (and, in group mode, so must patients)."""
    spread = images.groupby("sha256")["split"].nunique()
    if (spread > 1).any():
        raise AssertionError(f"duplicates straddle splits: {spread[spread > 1].index.tolist()}")


def patients_across_splits(images: pd.DataFrame) -> list[str]:
    """Patient ids found in more than one split (always empty in group mode)."""
    spread = images.groupby("patient")["split"].nunique()
    return sorted(spread[spread > 1].index.tolist())


def summarize(
    images: pd.DataFrame,
    index: DataIndex,
    duplicates: list[dict[str, Any]],
    crossed: list[dict[str, Any]],
) -> dict[str, Any]:
    """Numeric, nested counts for `dvc metrics show`."""
    summary: dict[str, Any] = {}
    for split in (*SPLITS, "total"):
        rows = images if split == "total" else images[images["split"] == split]
        per_class = rows["class"].value_counts()
        summary[split] = {name: int(per_class.get(name, 0)) for name in index.class_names}
        summary[split]["total"] = len(rows)
    summary["patients"] = {
        split: int(images.loc[images["split"] == split, "patient"].nunique()) for split in SPLITS
    }
    summary["patients"]["total"] = int(images["patient"].nunique())
    summary["patients"]["in_several_splits"] = len(patients_across_splits(images))
    summary["files"] = {
        "usable": len(images),
        "bad": len(index.bad_files),
        "skipped": len(index.skipped_files),
        "ignored_folders": len(index.ignored_folders),
        "duplicate_groups": len(duplicates) - len(crossed),  # same-class groups, kept together
        "duplicate_files": sum(len(g["paths"]) for g in duplicates if len(g["classes"]) == 1),
        "cross_class_duplicate_files": sum(len(group["paths"]) for group in crossed),
        "unmatched_patient_names": len(index.unmatched_patients),
        "link_problems": len(index.link_problems),
    }
    return summary


def build_report(
    images: pd.DataFrame,
    index: DataIndex,
    duplicates: list[dict[str, Any]],
    crossed: list[dict[str, Any]],
    goal: np.ndarray,
    mode: str,
    ratios: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """Everything left out or suspicious, with reasons, for a person to read."""
    split_of = dict(zip(images["path"], images["split"], strict=True))
    same_class = [
        {**group, "split": split_of[group["paths"][0]]}
        for group in duplicates
        if len(group["classes"]) == 1
    ]
    return {
        "mode": mode,
        "ratios": list(ratios),
        "seed": seed,
        "targets": {
            split: dict(zip(index.class_names, goal[:, s].tolist(), strict=True))
            for s, split in enumerate(SPLITS)
        },
        **_left_out(index, crossed),
        "duplicate_groups": same_class,
        "patients_in_several_classes": patients_in_several_classes(images),
        "patients_in_several_splits": patients_across_splits(images),
    }


def _left_out(index: DataIndex, crossed: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's account of the data folder: what was left out or not followed, and why."""
    return {
        "raw_dir": index.location,
        "classes": index.class_names,
        "bad_files": index.bad_files,
        "skipped_files": index.skipped_files,
        "ignored_folders": index.ignored_folders,
        "link_problems": index.link_problems,
        "link_notes": index.link_notes,
        "cross_class_duplicates": [{**group, "error": CROSS_CLASS} for group in crossed],
        "unmatched_patient_names": index.unmatched_patients,
    }


CROSS_CLASS = (
    "the same image under several classes (a copy, a hard link or a symbolic link): its label "
    "is ambiguous, every path is left out"
)
OUTPUTS = ("train.csv", "val.csv", "test.csv", "index.csv", "summary.json", "report.json")


def remove_outputs(out_dir: str | Path) -> None:
    """Delete the stage's outputs in `out_dir`, so none from an earlier run looks current."""
    for name in OUTPUTS:
        (Path(out_dir) / name).unlink(missing_ok=True)


def write_split(result: SplitResult, out_dir: str | Path) -> None:
    """Write train/val/test.csv, index.csv, summary.json and report.json, each atomically.

    The old outputs go first and the report comes last: a run stopped half-way leaves
    missing files (which DVC reruns), never a mix of old and new ones.
    """
    out = Path(out_dir)
    remove_outputs(out)
    for split in SPLITS:
        io.write_csv(out / f"{split}.csv", result.manifest(split))
    index_columns = [c for c in result.images.columns if c != "folder"]
    io.write_csv(out / "index.csv", result.images[index_columns].sort_values("path"))
    io.write_json(out / "summary.json", result.summary)
    io.write_json(out / "report.json", result.report)


def run_split(
    data_params: dict[str, Any],
    split_params: dict[str, Any],
    root: str | Path | None = None,
    progress: bool = True,
) -> SplitResult:
    """Index, split, write into `split.out_dir` (relative to `root`) and log a summary.

    When the split fails (`DataError`), the old outputs are removed and `report.json`
    holds the error and what was found, so nothing stale looks like a result.
    """
    out_name = Path(split_params["out_dir"])
    out_dir = out_name if root is None or out_name.is_absolute() else Path(root) / out_name
    try:
        result = make_split(data_params, split_params, root=root, progress=progress)
    except DataError as err:
        remove_outputs(out_dir)
        report = {"error": str(err), **getattr(err, "report", {})}
        io.write_json(out_dir / "report.json", report)
        log.debug("split failed; wrote %s/report.json", out_name)  # the error is THE line
        raise
    write_split(result, out_dir)
    for line in describe(result):
        log.info(line)
    log.info("wrote %s/{train,val,test}.csv, index.csv, summary.json, report.json", out_name)
    return result


def describe(result: SplitResult) -> list[str]:
    """A short human summary of the split."""
    summary, report = result.summary, result.report
    files = summary["files"]
    lines = [
        f"split mode {report['mode']}, seed {report['seed']}, ratios {report['ratios']}: "
        + ", ".join(f"{s} {summary[s]['total']}" for s in SPLITS)
        + f" of {summary['total']['total']} images ({summary['patients']['total']} patients)"
    ]
    for name in report["classes"]:
        counts = " / ".join(str(summary[s][name]) for s in SPLITS)
        wanted = " / ".join(str(report["targets"][s][name]) for s in SPLITS)
        lines.append(f"  {name}: {counts} (target {wanted})")
    lines.append(
        f"left out: {files['bad']} bad, {files['skipped']} skipped, "
        f"{files['cross_class_duplicate_files']} cross-class duplicates; "
        f"{files['duplicate_groups']} same-class duplicate groups kept together; "
        f"{files['unmatched_patient_names']} names without a patient id; "
        f"{files['link_problems']} symbolic links not followed"
    )
    for entry in report["bad_files"][:10]:
        lines.append(f"  bad: {entry['path']}: {entry['reason']}")
    if len(report["bad_files"]) > 10:
        lines.append(f"  ... {len(report['bad_files']) - 10} more in report.json")
    for group in report["cross_class_duplicates"][:10]:
        classes = ", ".join(group["classes"])
        lines.append(f"  cross-class duplicate ({classes}): {', '.join(group['paths'])}")
    if len(report["cross_class_duplicates"]) > 10:
        lines.append(f"  ... {len(report['cross_class_duplicates']) - 10} more in report.json")
    for entry in report["link_problems"][:10]:
        lines.append(f"  link: {entry['path']}: {entry['reason']}")
    for entry in report["ignored_folders"]:
        lines.append(f"  ignored folder {entry['folder']} ({entry['files']} files)")
    return lines


__all__ = [
    "DataError",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "SplitResult",
    "check_ratios",
    "group_split",
    "image_split",
    "make_split",
    "run_split",
    "split_counts",
    "write_split",
]
