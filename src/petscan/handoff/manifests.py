"""The split manifests: `<split.out_dir>/{train,val,test}.csv`, one row per image.

Written by the `split` stage; read by featurize, train, evaluate, explain and tune, always
through `read_manifest` (the dtypes and column checks in one place).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from petscan.utils.errors import BadInputError, MissingInputError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "class", "label", "patient", "sha256")


def manifest_paths(split_dir: str | Path) -> dict[str, Path]:
    """`{split}.csv` in `split_dir`, for each of `SPLITS`."""
    return {split: Path(split_dir) / f"{split}.csv" for split in SPLITS}


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A split manifest (`split` stage), with a clear error when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"split manifest {path} not found: run `dvc repro split` first")
    frame = pd.read_csv(path, dtype={"path": str, "class": str, "patient": str, "sha256": str})
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise BadInputError(f"{path} lacks column(s) {missing}: rerun `dvc repro split`")
    return frame
