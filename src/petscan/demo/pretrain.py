"""Pretrain the `pet_demo` backbone on a synthetic PET corpus the demo never sees.

    make pretrain-demo          # = petscan pretrain-demo: corpus, training, weights + sidecar

RadImageNet's role for the demo: a backbone whose filters already respond to the
structures that matter, learned on other images with a richer task. The corpus comes from
the same generator as the demo but with another seed and another patient-id prefix
(params `pretrain.corpus`), so no image or patient of `data/raw` is in it; the task choice
is scored on a third generated set (`pretrain.selection`), never on the demo's val or test.

The task (params `pretrain.tasks`) is multi-task on every image:
- `lesions`: a dense map of the visible lesions from the generator's `.lesions.csv`, one
  channel per kind (breast primary, prostate primary, lymph node, distant metastasis), as
  Gaussian blobs on the backbone's 32 x 20 output grid: per-cell sigmoid cross-entropy;
- `sex`: the patient's sex from `.ground_truth.csv`, on the pooled features;
- `label`: the three demo classes, on the pooled features.
The backbone is then saved alone (legacy `.h5`, as RadImageNet's files are) with a sidecar
JSON recording the command, seeds, corpus, time and final metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from petscan.demo.generate import generate
from petscan.demo.truth import BREAST, NORMAL, PROSTATE, class_kind
from petscan.handoff.ground_truth import LESIONS_FILE, TRUTH_FILE
from petscan.model import pet_demo
from petscan.params.loading import PARAMS_FILE, load_sections, workspace_root
from petscan.utils.io import atomic_path, sha256_file, write_json

if TYPE_CHECKING:
    from petscan.params.learning import CorpusParams, PretrainParams

CLASS_KINDS = (NORMAL, BREAST, PROSTATE)  # label order
NODE_KINDS = ("axillary_node", "pelvic_node", "para_aortic_node", "chest_node")
METASTASIS_KINDS = ("bone_met", "liver_met", "lung_met")
MAP_CHANNELS = ("breast_primary", "prostate_primary", "node", "metastasis")
TASKS = ("lesions", "sex", "label")
STRIDE = 8  # the backbone's output stride
CORPUS_SPEC = ".corpus.json"  # in a generated corpus: the spec it was made from


@dataclass
class Corpus:
    """Decoded images (N, H, W, 3) uint8 and their targets, one row per image."""

    images: np.ndarray
    label: np.ndarray  # (N,) int: CLASS_KINDS index
    sex: np.ndarray  # (N,) float: 1 = female
    maps: np.ndarray  # (N, h, w, len(MAP_CHANNELS)) float32 in [0, 1]
    patients: np.ndarray  # (N,) str
    paths: list[str]

    def take(self, index: np.ndarray) -> Corpus:
        return Corpus(
            self.images[index],
            self.label[index],
            self.sex[index],
            self.maps[index],
            self.patients[index],
            [self.paths[i] for i in index],
        )


# --------------------------------------------------------------------------- the corpus


def make_corpus(folder: Path, spec: CorpusParams, base_height: int) -> Path:
    """Generate a corpus with the demo's generator (other seed, other prefix), or reuse the
    one in `folder` if it was made from the same spec (`CORPUS_SPEC` records it)."""
    wanted = {**spec.model_dump(), "base_height": base_height}
    marker = folder / CORPUS_SPEC
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    generate(
        folder,
        spec.counts,
        spec.seed,
        base_height=base_height,
        prefix=spec.prefix,
        force=True,
        progress=sys.stderr.isatty(),
    )
    write_json(marker, wanted)
    return folder


def channel_of(kind: str, patient_kind: str) -> int | None:
    """The lesion-map channel of a lesion kind (None: not drawn)."""
    if kind == "primary":
        return 0 if patient_kind == BREAST else 1
    if kind in NODE_KINDS:
        return 2
    if kind in METASTASIS_KINDS:
        return 3
    return None


def lesion_maps(
    truth: pd.DataFrame, lesions: pd.DataFrame, grid: tuple[int, int], sigma: float
) -> np.ndarray:
    """(N, h, w, C) Gaussian maps of the visible lesions, in grid cells of a stretched image.

    A lesion at file pixel (col, row) of an image `height` x `width` lands at grid cell
    (row / height * h, col / width * w) (the stretch resize); each channel is the maximum
    of its lesions' blobs, so overlapping lesions do not add up past 1.
    """
    h, w = grid
    maps = np.zeros((len(truth), h, w, len(MAP_CHANNELS)), dtype=np.float32)
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    where = {path: i for i, path in enumerate(truth["path"])}
    kinds = dict(zip(truth["path"], truth["folder"].map(class_kind), strict=True))
    shapes = truth.set_index("path")[["height", "width"]]
    for lesion in lesions[lesions["visible"].astype(bool)].itertuples():
        channel = channel_of(lesion.kind, kinds[lesion.path])
        if channel is None or lesion.path not in where:
            continue
        height, width = shapes.loc[lesion.path]
        y, x = lesion.row / height * h, lesion.col / width * w
        blob = np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * sigma**2))
        target = maps[where[lesion.path], :, :, channel]
        np.maximum(target, blob, out=target)
    return maps


def load_corpus(folder: Path, input_size: tuple[int, int], sigma: float) -> Corpus:
    """Decode every image as the pipeline does (`images.load_resized`, stretch) + targets."""
    from petscan.data.images import load_resized

    truth = pd.read_csv(folder / TRUTH_FILE)
    lesions = pd.read_csv(folder / LESIONS_FILE)
    images = np.zeros((len(truth), *input_size, 3), dtype=np.uint8)
    for i, (sub, path) in enumerate(zip(truth["folder"], truth["path"], strict=True)):
        pixels = load_resized(folder / sub / Path(path).name, input_size)
        images[i] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    grid = (input_size[0] // STRIDE, input_size[1] // STRIDE)
    kinds = truth["folder"].map(class_kind)
    return Corpus(
        images=images,
        label=kinds.map(CLASS_KINDS.index).to_numpy(np.int64),
        sex=(truth["sex"] == "F").to_numpy(np.float32),
        maps=lesion_maps(truth, lesions, grid, sigma),
        patients=truth["patient"].to_numpy(str),
        paths=truth["path"].tolist(),
    )


def patient_split(patients: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) image indices with `share` of the patients held out, seeded."""
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(unique, size=max(1, round(share * len(unique))), replace=False))
    is_val = np.array([p in held for p in patients])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def subsample(corpus: Corpus, patients: int | None, seed: int) -> Corpus:
    """The images of `patients` patients drawn at random (all of them when None)."""
    unique = np.unique(corpus.patients)
    if patients is None or patients >= len(unique):
        return corpus
    keep = set(np.random.default_rng([seed, 7]).choice(unique, size=patients, replace=False))
    return corpus.take(np.flatnonzero([p in keep for p in corpus.patients]))


# --------------------------------------------------------------------------- the run


def run_pretrain(
    pretrain: PretrainParams,
    base_height: int,
    out: Path,
    work_dir: Path,
    patients: int | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Generate (or reuse) the corpora, pretrain, write `out` and its sidecar; return the record."""
    import keras
    import tensorflow as tf

    from petscan.demo.pretrain_fit import (
        build_network,
        compile_network,
        fit,
        pooled_features,
        probe_auc,
        scores,
    )
    from petscan.utils import logs

    started = time.perf_counter()
    tasks = tuple(pretrain.tasks)
    keras.utils.set_random_seed(pretrain.seed)
    tf.config.experimental.enable_op_determinism()
    sigma = pretrain.lesion_sigma_cells
    corpus_dir = make_corpus(work_dir / "corpus", pretrain.corpus, base_height)
    selection_dir = make_corpus(work_dir / "selection", pretrain.selection, base_height)
    generated = time.perf_counter()
    size = pet_demo.INPUT_SIZE
    corpus = subsample(load_corpus(corpus_dir, size, sigma), patients, pretrain.seed)
    selection = load_corpus(selection_dir, size, sigma)
    train_idx, val_idx = patient_split(corpus.patients, pretrain.val_share, pretrain.seed)
    train, val = corpus.take(train_idx), corpus.take(val_idx)
    loaded = time.perf_counter()

    network, backbone = build_network(tasks, size)
    steps = -(-len(train.label) // pretrain.batch_size)
    compile_network(network, tasks, pretrain, steps)
    history = fit(network, train, val, tasks, pretrain)
    trained = time.perf_counter()
    record = {
        "command": command,
        "backbone": pet_demo.NAME,
        "input_size": list(size),
        "params": pretrain.model_dump(),
        "corpus": _describe(corpus, pretrain.corpus, patients),
        "train_images": len(train.label),
        "val_images": len(val.label),
        "selection": _describe(selection, pretrain.selection, None),
        "history": {k: [round(v, 5) for v in values] for k, values in history.items()},
        "val_scores": scores(network, val, tasks),
        "selection_probe_auc_macro": probe_auc(
            pooled_features(backbone, selection.images), selection
        ),
    }
    record["seconds"] = {
        "generate": round(generated - started, 1),
        "load": round(loaded - generated, 1),
        "train": round(trained - loaded, 1),
        "total": round(time.perf_counter() - started, 1),
    }
    record["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    record["versions"] = {"keras": keras.__version__, "tensorflow": tf.__version__}
    with logs.legacy_h5(), atomic_path(out, suffix=".h5") as tmp:
        backbone.save(str(tmp))
    record["sha256"] = sha256_file(out)
    record["size_bytes"] = out.stat().st_size
    write_json(out.with_suffix(".json"), record)
    return record


def _describe(corpus: Corpus, spec: CorpusParams, patients: int | None) -> dict[str, Any]:
    counts = np.bincount(corpus.label, minlength=len(CLASS_KINDS))
    return {
        "seed": spec.seed,
        "prefix": spec.prefix,
        "images": int(len(corpus.label)),
        "patients": int(len(np.unique(corpus.patients))),
        "patients_limit": patients,
        "images_per_class": dict(zip(CLASS_KINDS, counts.tolist(), strict=True)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="petscan pretrain-demo",
        description="Pretrain the pet_demo backbone on a synthetic PET corpus disjoint from "
        "the demo (params section `pretrain`); writes the weights and a sidecar JSON.",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--out", help="weights file (default: pretrain.out)")
    parser.add_argument(
        "--patients", type=int, help="use only this many corpus patients (learning curves)"
    )
    parser.add_argument("--epochs", type=int, help="override pretrain.epochs (quick checks)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = load_sections(["pretrain", "synthetic.base_height"], args.params)
    pretrain = sections.pretrain
    if args.epochs is not None:  # validated as params.yaml's value would be
        pretrain = type(pretrain).model_validate({**pretrain.model_dump(), "epochs": args.epochs})
    root = workspace_root()
    out = root / (args.out or pretrain.out)
    command = "petscan pretrain-demo " + " ".join(sys.argv[2:] if argv is None else argv)
    record = run_pretrain(
        pretrain,
        sections.synthetic.base_height,
        out,
        root / pretrain.work_dir,
        patients=args.patients,
        command=command.strip(),
    )
    print(json.dumps({k: record[k] for k in ("val_scores", "seconds", "sha256")}))
    print(f"selection probe macro AUC {record['selection_probe_auc_macro']}; wrote {out}")
    return 0
