"""What makes a run reproducible: the code (git state), the data (the split manifests'
hashes, logged as MLflow datasets), the backbone weights; and the run's name.

Training and tuning runs carry the same tags (`run_tags`), so a study's trials and the
training run of the same data and code can be matched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from petscan.handoff.manifests import manifest_paths
from petscan.handoff.records import WeightsInfo
from petscan.params.loading import repo_root
from petscan.utils.redact import redact_text


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def git_state(root: Path | None = None) -> tuple[str, str]:
    """(`git rev-parse HEAD` or "unknown", dirty flag "true"/"false"/"unknown").

    Dirty means a tracked file differs from the commit, except `dvc.lock`: DVC rewrites
    it while the pipeline runs (it records outputs, not code or params)."""
    root = root or repo_root()
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return "unknown", "unknown"
    status = _git(
        root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock"
    )
    dirty = "unknown" if status is None else ("true" if status else "false")
    return commit, dirty


DATASET_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
DATASET_DIGEST_CHARS = 32  # MLflow stores a dataset digest in at most 36 characters


def manifest_hash(manifests: Sequence[str | Path]) -> str:
    """sha256 over the bytes of the split manifests, in the order given."""
    digest = hashlib.sha256()
    for path in manifests:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"split manifest {path} not found: run the split stage first (`dvc repro split`)"
            )
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_hash(split_dir: str | Path) -> str:
    """The data a run saw (tag `data_manifest_sha256`, the same for training and tuning runs):
    sha256 over the bytes of train.csv, val.csv and test.csv of `split_dir`, in that order.
    The manifests list every image's path, class, patient and sha256."""
    return manifest_hash(list(manifest_paths(split_dir).values()))


def run_tags(split_dir: str | Path, weights: WeightsInfo | None) -> dict[str, str]:
    """Tags that make a run reproducible: code, data, experiment and backbone weights (the
    `WeightsInfo` fields under their own names; `random_init` is "true" or "false")."""
    commit, dirty = git_state()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        "data_manifest_sha256": data_hash(split_dir),
    }
    if weights is not None:
        tags.update({key: str(value) for key, value in weights.to_dict().items()})
        tags["weights_source"] = redact_text(weights.weights_source)
        tags["random_init"] = "true" if weights.random_init else "false"
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_name(prefix: str, tags: dict[str, str]) -> str:
    """The DVC experiment's name when DVC runs one (`DVC_EXP_NAME`), else `<prefix>-<commit>`
    (`train-4ae41df`, `-dirty` appended for uncommitted changes): never MLflow's random words."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return exp_name
    commit = tags.get("git_commit", "unknown")
    name = f"{prefix}-{commit[:7] if commit != 'unknown' else 'nogit'}"
    return f"{name}-dirty" if tags.get("git_dirty") == "true" else name


def manifest_datasets(split_dir: str | Path, root: str | Path | None = None) -> list[Any]:
    """The split manifests as MLflow dataset inputs: name `<split>`, source the manifest's
    path (relative to `root`), digest the first 32 hex digits of the manifest's sha256,
    context train / validation / test."""
    inputs = []
    for split, path in manifest_paths(split_dir).items():
        frame = pd.read_csv(path, dtype={"patient": str})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:DATASET_DIGEST_CHARS]
        source = path.relative_to(root) if root and path.is_relative_to(root) else path
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways"
            warnings.simplefilter("ignore", UserWarning)
            entity = mlflow.data.from_pandas(
                frame, source=str(source), name=split, digest=digest, targets="label"
            )._to_mlflow_entity()  # (and "integer columns cannot represent missing values")
        context = InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[split])
        inputs.append(DatasetInput(entity, tags=[context]))
    return inputs


def log_datasets(run_id: str, split_dir: str | Path, root: str | Path | None = None) -> None:
    """Log train.csv, val.csv and test.csv as the run's datasets (MLflow's Dataset column)."""
    mlflow.MlflowClient().log_inputs(run_id, datasets=manifest_datasets(split_dir, root))
