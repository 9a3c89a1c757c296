"""DVC stage `featurize`: run the frozen backbone once over every split and cache its features.

Reads params sections `data` (class names), `model` (backbone, input size, preprocessing,
resize), `featurize` (batch size, augmented views, augmentation, seed, out_dir) and
`weights` (`weights.dir`: where `weights.h5` / `weights.json` are) and `split.out_dir`.
Reads the manifests `<split.out_dir>/{train,val,test}.csv` and writes
`<featurize.out_dir>/{split}.npy` (float32 (N, V, D); V = 1 + augment_views for train, 1 for
val and test) and `{split}.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.handoff.manifests import SPLITS, manifest_paths
from petscan.handoff.records import banner
from petscan.params.loading import load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs
from petscan.utils.errors import BadInputError, MissingInputError
from petscan.utils.io import sha256_file

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from petscan.handoff.records import WeightsInfo
    from petscan.params.learning import FeaturizeParams, ModelParams
    from petscan.params.loading import StageParams

SECTIONS = (  # not the head's params: changing those must not re-run featurize
    "data.classes",
    "model.backbone",
    "model.input_size",
    "model.preprocessing",
    "model.resize",
    "featurize",
    "weights.dir",
    "split.out_dir",
)


def featurize(
    params: StageParams,
    root: str | Path = ".",
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """The stage: features of `splits` from `<split.out_dir>/{split}.csv` into
    `featurize.out_dir`, with the backbone in `weights.dir`; returns what
    `featurize_manifests` returns. Paths in the manifests are relative to `root`."""
    from petscan.handoff.records import read_weights_info, weights_file

    weights_dir = Path(params.weights.dir)
    weights = read_weights_info(weights_dir)
    manifests = manifest_paths(params.split.out_dir)
    logs.import_tensorflow()  # after the inputs are checked: TensorFlow takes ~5 s to load
    return featurize_manifests(
        {split: manifests[split] for split in splits},
        params.featurize.out_dir,
        params.model,
        params.featurize,
        weights_path=weights_file(weights_dir),
        weights=weights,
        class_names=params.data.class_names,
        root=root,
        progress=progress,
    )


def featurize_manifests(
    manifests: Mapping[str, str | Path],
    out_dir: str | Path,
    model: ModelParams,
    featurize: FeaturizeParams,
    weights_path: str | Path | None,
    weights: WeightsInfo | None = None,
    class_names: list[str] | None = None,
    root: str | Path = ".",
    augment_splits: tuple[str, ...] = ("train",),
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Featurize every split of `manifests` ({split: csv}) into `out_dir`.

    Writes `{split}.npy` and `{split}.json` per split and returns the JSON metadata
    (plus timing, which is kept out of the files so they are reproducible).
    Splits in `augment_splits` get `featurize.augment_views` augmented views.

    All or nothing: every file of every manifest is checked first (`check_files`), the
    outputs are written into `.<out_dir name>.partial` beside `out_dir` and moved into
    `out_dir` together once all splits are done; a failure leaves `out_dir` as it was.
    """
    from petscan.handoff.manifests import read_manifest
    from petscan.handoff.records import feature_files
    from petscan.model.network import build_feature_extractor, resolve_precision

    if weights is not None and weights.backbone != model.backbone:
        raise ValueError(
            f"the weights file is for backbone {weights.backbone!r} but model.backbone "
            f"is {model.backbone!r}: run `dvc repro fetch_weights featurize`"
        )
    frames = {}
    for split, manifest in manifests.items():
        frames[split] = read_manifest(manifest)
        check_labels(frames[split], Path(manifest), class_names)
        check_files(frames[split], manifest, root)
    precision = resolve_precision(featurize.precision)
    extractor = build_feature_extractor(model, weights_path, precision)
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        results = {
            split: _featurize_one(
                extractor,
                frames[split],
                split,
                manifest,
                staging,
                model,
                featurize,
                (weights, class_names, precision),
                root,
                split in augment_splits,
                progress,
            )  # fmt: skip
            for split, manifest in manifests.items()
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        for split in results:
            for staged, final in zip(
                feature_files(staging, split), feature_files(out_dir, split), strict=True
            ):
                os.replace(staged, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results


def _featurize_one(
    extractor: keras.Model,
    frame: pd.DataFrame,
    split: str,
    manifest: str | Path,
    out_dir: Path,
    model: ModelParams,
    featurize: FeaturizeParams,
    provenance: tuple[WeightsInfo | None, list[str] | None, str],
    root: str | Path,
    augment_split: bool,
    progress: bool,
) -> dict[str, Any]:
    """Features of one split into `out_dir` (`{split}.npy` + `{split}.json`); returns the
    JSON metadata with the timing. `provenance`: (weights, class names, precision)."""
    import numpy as np

    from petscan.data.features import feature_health, featurize_split
    from petscan.data.tf_data import build_augmenter
    from petscan.handoff.records import feature_files, manifest_meta, write_feature_meta

    weights, class_names, precision = provenance
    augment = augment_split and featurize.augment_views > 0
    augmenter = build_augmenter(featurize.augmentation, featurize.seed) if augment else None
    npy = feature_files(out_dir, split)[0]
    timing = featurize_split(
        extractor,
        frame,
        npy,
        model,
        featurize.batch_size,
        featurize.augment_views if augment else 0,
        augmenter,
        root,
        desc=f"featurize {split}",
        progress=progress,
    )
    meta = manifest_meta(
        split,
        manifest,
        (timing["rows"], timing["views"], timing["dim"]),
        weights=weights,
        preprocessing=model.preprocessing,
        resize=model.resize,
        input_size=list(model.input_size),
        augment_views=timing["views"] - 1,
        augmented=bool(augment),
        augmentation=featurize.augmentation.model_dump(),
        seed=featurize.seed,
        precision=precision,
        class_names=class_names,
        health=feature_health(np.load(npy, mmap_mode="r")),
    )
    write_feature_meta(out_dir, meta)
    return {**meta.to_dict(), "timing": timing}


def check_labels(frame: pd.DataFrame, manifest: Path, class_names: list[str] | None) -> None:
    """Every row's `label` names its `class` in `class_names` (the order of data.classes)."""
    if class_names is None or "class" not in frame.columns:
        return
    expected = frame["label"].map(lambda i: class_names[i] if 0 <= i < len(class_names) else None)
    bad = frame[expected != frame["class"]]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{manifest}: row {row['path']!r} has class {row['class']!r} with label "
            f"{row['label']}, but data.classes in params.yaml gives labels {class_names}: "
            "rerun `dvc repro split`"
        )


def check_files(frame: pd.DataFrame, manifest: str | Path, root: str | Path = ".") -> None:
    """Every file of a manifest is there and unchanged since the split (same sha256).

    Run before the backbone starts, so a file deleted or corrupted after `split` is one
    clear error naming it, not a failure inside the tf.data pipeline.
    """
    digests = frame["sha256"] if "sha256" in frame.columns else [None] * len(frame)
    for rel, digest in zip(frame["path"].astype(str), digests, strict=True):
        file = Path(root) / rel
        if not file.is_file():
            raise MissingInputError(
                f"{file} is listed in {manifest} but missing: restore it, or rerun `dvc repro` "
                "(the split stage indexes the folder again)"
            )
        if isinstance(digest, str) and digest and sha256_file(file) != digest:
            raise BadInputError(
                f"{file} changed after the split (its sha256 differs from {manifest}): rerun "
                "`dvc repro` (the split stage checks the file again)"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SPLITS),
        choices=SPLITS,
        help="splits to featurize (train val test)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


@errors.reports_user_errors("featurize")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    results = featurize(params, workspace_root(), args.splits, progress=not args.no_progress)
    out_dir = params.featurize.out_dir
    for split, result in results.items():
        print(
            f"{split}: {result['rows']} images x {result['views']} views -> "
            f"{out_dir}/{split}.npy ({result['dim']} features), "
            f"{result['timing']['images_per_s']:.1f} images/s"
        )
    warning = next((banner(result) for result in results.values()), None)
    if warning:
        print(f"WARNING: features computed with a {warning}")
    return 0
