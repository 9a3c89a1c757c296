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

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from petscan.params.inputs import DataParams, SplitParams


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


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Per-class targets as the seed computed them: int(r0 n), int(r1 n), the rest.

    `ratios` is `split.ratios` (train, val, test; checked by the schema).

    >>> split_counts(424, (0.9, 0.05, 0.05))
    (381, 21, 22)
    """
    r_train, r_val, _ = ratios
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
    data: DataParams,
    split: SplitParams,
    root: str | Path | None = None,
    progress: bool = True,
) -> SplitResult:
    """Index `data.raw_dir`, drop what cannot be used and split the rest (`split.mode`)."""
    index = index_images(
        data.raw_dir,
        data.classes,
        patient_pattern=data.patient_pattern,
        max_file_mb=split.max_file_mb,
        max_pixels=split.max_pixels,
        root=root,
        progress=progress,
        min_side=split.min_side,
        max_aspect=split.max_aspect,
    )
    duplicates = duplicate_groups(index.images)
    images, crossed = drop_cross_class_duplicates(index.images)
    ratios = tuple(split.ratios)
    try:
        check_classes(index, images, data.classes)
    except DataError as err:
        err.report = {
            "mode": split.mode,
            "ratios": list(ratios),
            "seed": split.seed,
            **_left_out(index, crossed),
            "duplicate_groups": [g for g in duplicates if len(g["classes"]) == 1],
        }
        raise
    images = images.assign(group=group_ids(images))
    goal = targets(images, index.class_names, ratios)
    if split.mode == "image":
        images["split"] = image_split(images, ratios, split.seed)
    else:
        groups = images["group"].to_numpy()
        images["split"] = group_split(images, groups, goal, split.seed, split.restarts)
    check_no_leak(images)
    if split.mode == "group" and patients_across_splits(images):
        raise AssertionError("group split put a patient in two splits")
    summary = summarize(images, index, duplicates, crossed)
    report = build_report(images, index, duplicates, crossed, goal, split.mode, ratios, split.seed)
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
