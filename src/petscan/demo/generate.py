"""The synthetic whole-body PET demo data set (`petscan generate`), a stand-in for a hospital
export: one folder per class of PNG and JPEG files, and the hidden ground-truth files.

A patient is planned (`plan_patients`: class, id, number of views), drawn
(`demo.anatomy.build_anatomy`: body, organs, benign findings and lesions from `demo.truth`)
and imaged once per view (`demo.rendering`: projection, blur, noise, display, file format).

Classes (folder names are matched by the words "breast", "prostate" and otherwise "no
cancer"/"normal"): breast cancer patients are women with a focal lesion in one breast,
often with ipsilateral axillary nodes and sometimes bone, liver or lung metastases;
prostate cancer patients are men with focal uptake just below (and partly behind) the
bladder, sometimes with pelvic nodes and bone metastases; patients without cancer are of
either sex and show physiological uptake and benign confounders only. Benign findings
(brown fat, muscle, joints, bowel, an injection site) are drawn with the same
probabilities in every class, so only the lesions tell the classes apart.

Everything is seeded from `(seed, patient index)`: the same parameters give
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from petscan.demo.anatomy import build_anatomy
from petscan.demo.rendering import DEFAULT_VISIBLE_CONTRAST, draw_view, encode, render
from petscan.demo.truth import class_kind
from petscan.handoff.ground_truth import LESION_COLUMNS, LESIONS_FILE, TRUTH_FILE
from petscan.params.inputs import DEMO_PATIENT_PREFIX
from petscan.params.loading import PARAMS_FILE, load_section
from petscan.utils.errors import UserError, reports_user_errors


@dataclass(frozen=True)
class PatientPlan:
    index: int  # seeds the patient together with the data set seed
    patient: str
    folder: str
    kind: str
    views: int


def plan_patients(
    counts: dict[str, int],
    seed: int,
    images_per_patient: Sequence[int] = (1, 3),
    prefix: str = DEMO_PATIENT_PREFIX,
) -> list[PatientPlan]:
    """Patients with 1..3 views each so that every folder gets exactly its count of images.

    Patient ids (`<prefix>-00042`) are a seeded permutation over the whole data set, so an
    id says nothing about the class. Another prefix keeps another corpus's ids apart from
    the demo's (the pretraining corpus uses `syn`). `counts` (>= 0 each) and
    `images_per_patient` ([min, max], 1 <= min <= max) are checked by the schema
    (`synthetic`, `pretrain.corpus`).
    """
    low, high = images_per_patient[0], images_per_patient[-1]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E3779B9]))
    draft: list[tuple[str, int]] = []
    for folder, count in counts.items():
        class_kind(folder)
        left = count
        while left > 0:
            views = min(int(rng.integers(low, high + 1)), left)
            draft.append((folder, views))
            left -= views
    numbers = rng.permutation(len(draft)) + 1
    width = max(5, len(str(len(draft))))
    return [
        PatientPlan(i, f"{prefix}-{numbers[i]:0{width}d}", folder, class_kind(folder), views)
        for i, (folder, views) in enumerate(draft)
    ]


def _patient_rows(
    task: tuple[PatientPlan, int, int, str, str, float],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render and write every view of one patient (runs in a worker process).

    Returns the views' ground-truth rows and their lesions' rows.
    """
    plan, seed, base_height, write_dir, final_dir, visible_contrast = task
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(plan.index)]))
    anatomy = build_anatomy(rng, plan.kind)
    rows, lesion_rows = [], []
    for k in range(1, plan.views + 1):
        view = draw_view(rng, anatomy, base_height, first=k == 1)
        grey, where, lesions = render(rng, anatomy, view, visible_contrast)
        data, ext = encode(grey, view.fmt, view.quality)
        name = f"{plan.patient}_v{k}{ext}"
        target = Path(write_dir) / plan.folder / name
        target.write_bytes(data)
        path = (Path(final_dir) / plan.folder / name).as_posix()
        lesion_rows += [{"path": path, "patient": plan.patient, "view": k, **r} for r in lesions]
        rows.append(
            {
                "path": path,
                "folder": plan.folder,
                "patient": plan.patient,
                "view": k,
                "format": view.fmt,
                "height": view.height,
                "width": view.width,
                "angle_deg": round(view.angle_deg, 2),
                **anatomy.truth,
                **where,
            }
        )
    return rows, lesion_rows


def _prepare_out(out_dir: Path, force: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(
            f"{out_dir} exists and is not a folder: remove it or pass another --out"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(
            f"{out_dir} is not empty: pass --force (force=True) to replace it, "
            "or choose another --out"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def generate(
    out_dir: str | Path,
    counts: dict[str, int],
    seed: int,
    images_per_patient: Sequence[int] = (1, 3),
    base_height: int = 512,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    visible_contrast: float = DEFAULT_VISIBLE_CONTRAST,
    prefix: str = DEMO_PATIENT_PREFIX,
) -> pd.DataFrame:
    """Write the synthetic data set to `out_dir/<folder>/<patient>_v<k>.<ext>`.

    Files are written into a temporary folder beside `out_dir` and renamed into place at
    the end, so `out_dir` is either the old data or the complete new set. A non-empty
    `out_dir` is replaced only when `force` is true. Returns one row per file (path,
    folder, patient, view, format, size and ground truth), also written to
    `out_dir/.ground_truth.csv`. Every lesion of every file (position and size in that
    file's pixels, contrast, `visible` when contrast >= `visible_contrast`) goes to
    `out_dir/.lesions.csv`; `visible_contrast` changes that file only, never an image.
    """
    out_dir = Path(out_dir)
    plans = plan_patients(counts, seed, images_per_patient, prefix)
    tmp = _prepare_out(out_dir, force)
    try:
        for folder in counts:
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        tasks = [
            (plan, seed, base_height, str(tmp), str(out_dir), visible_contrast) for plan in plans
        ]
        workers = max(1, int(workers or os.cpu_count() or 1))
        bar = tqdm(
            total=sum(p.views for p in plans), unit="img", desc="generate", disable=not progress
        )
        rows: list[dict[str, Any]] = []
        lesion_rows: list[dict[str, Any]] = []
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            results = (
                pool.imap(_patient_rows, tasks, chunksize=4) if pool else map(_patient_rows, tasks)
            )
            for views, lesions in results:
                rows += views
                lesion_rows += lesions
                bar.update(len(views))
        bar.close()
        frame = pd.DataFrame(rows).sort_values(["folder", "patient", "view"], ignore_index=True)
        frame.to_csv(tmp / TRUTH_FILE, index=False)
        lesions = pd.DataFrame(lesion_rows, columns=LESION_COLUMNS)
        lesions.sort_values(["path", "lesion"], ignore_index=True).to_csv(
            tmp / LESIONS_FILE, index=False
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return frame


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Counts multiplied by `scale`, rounded (used for a larger memory benchmark)."""
    if scale <= 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return {folder: round(n * scale) for folder, n in counts.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="petscan generate",
        description="Generate the synthetic whole-body PET demo data set "
        "(params section `synthetic`).",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: synthetic.out_dir)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every class count (default: 1)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: synthetic.seed)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all CPU cores)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when the output folder exists"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--volumes",
        action="store_true",
        help="write 3-D PET studies (DICOM, NIfTI) and their labels table for the ingest "
        "stage instead (synthetic.volumes, into ingest.source_dir)",
    )
    return parser.parse_args(argv)


@reports_user_errors("petscan generate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_section("synthetic", args.params)
    if args.volumes:
        return _volumes(args, params)
    out_dir = Path(args.out or params.out_dir)
    if args.if_missing and out_dir.exists():
        print(f"{out_dir} exists: not generating demo data")
        return 0
    counts = scaled_counts(params.counts, args.scale)
    seed = params.seed if args.seed is None else args.seed
    start = time.perf_counter()
    try:
        frame = generate(
            out_dir,
            counts,
            seed,
            images_per_patient=params.images_per_patient,
            base_height=params.base_height,
            workers=args.workers,
            force=args.force,
            progress=not args.quiet,
            visible_contrast=params.visible_contrast,
        )
    except (FileExistsError, ValueError) as err:  # a user error (exit 1), see utils.errors
        raise UserError(str(err)) from None
    seconds = time.perf_counter() - start
    per_folder = frame.groupby("folder")["path"].count().to_dict()
    patients = frame["patient"].nunique()
    print(f"wrote {len(frame)} images of {patients} synthetic patients to {out_dir}", end=" ")
    print(f"in {seconds:.1f} s")
    for folder, n in per_folder.items():
        people = frame.loc[frame.folder == folder, "patient"].nunique()
        print(f"  {folder}: {n} images, {people} patients")
    print(f"  formats: {frame['format'].value_counts().to_dict()}")
    print(f"  ground truth: {out_dir / TRUTH_FILE}, every lesion: {out_dir / LESIONS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _volumes(args: argparse.Namespace, params: Any) -> int:
    """`petscan generate --volumes`: see `demo.volumes`."""
    from petscan.demo.volumes import generate_volumes, studies_in  # here: nibabel, pydicom

    ingest = load_section("ingest", args.params)
    out_dir = Path(args.out or ingest.source_dir)
    labels = Path(ingest.labels) if args.out is None else out_dir / "labels.csv"
    if args.if_missing and studies_in(out_dir):
        print(f"{out_dir} holds studies: not generating volumes")
        return 0
    if studies_in(out_dir) and not args.force:
        raise UserError(f"{out_dir} is not empty: --force replaces it")
    seed = params.seed if args.seed is None else args.seed
    start = time.perf_counter()
    counts = scaled_counts(params.volumes.counts, args.scale)
    n = generate_volumes(out_dir, labels, counts, seed, params.volumes.voxel_mm)
    print(
        f"wrote {n} synthetic PET studies to {out_dir} (labels: {labels}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
