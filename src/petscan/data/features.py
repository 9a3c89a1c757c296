"""Cached backbone features: run the frozen backbone once per image, train heads on the cache.

`featurize_split` decodes every image of a manifest once (PIL, in parallel through
tf.data), makes its views (view 0 the plain image, then `augment_views` augmented copies
made with the seed's augmentation), runs the backbone on them and streams the pooled
features into `{split}.npy` (float32 (N, V, D), written through a memory map into a
temporary file that is renamed into place). `{split}.json` records what the features were
computed from (`handoff.records.FeatureMeta`), and `load_features` refuses a cache that
does not match its manifest. The images come through `data.tf_data`; the stage that runs
all this over the split manifests is `pipeline.featurize`.

Memory stays flat as the data set grows: only a few batches of images are in flight and
the output array lives on disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from petscan.data.images import ImageError
from petscan.data.tf_data import images_per_batch, view_dataset
from petscan.handoff.manifests import read_manifest
from petscan.handoff.records import (
    FEATURES_HINT,
    FeatureMeta,
    WeightsInfo,
    feature_files,
    manifest_meta,
    read_feature_meta,
    write_feature_meta,
)
from petscan.model.network import feature_moments
from petscan.utils.errors import BadInputError, MissingInputError
from petscan.utils.io import atomic_path, sha256_file

if TYPE_CHECKING:
    from petscan.params.learning import ModelParams

log = logging.getLogger(__name__)

TAIL_WARNING_S = 5.0  # seconds from the last batch to the end of a split worth a warning


@dataclass
class FeatureSet:
    """Cached features of one split with the manifest rows they belong to."""

    features: np.ndarray  # (N, V, D) float32; view 0 is the plain image
    labels: np.ndarray  # (N,) int64
    frame: pd.DataFrame  # the split manifest, row i <-> features[i]
    meta: FeatureMeta

    @property
    def views(self) -> int:
        return self.meta.views

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])


# ----------------------------------------------------------------------------- featurize


def _predict_full_batch(extractor: keras.Model, images: tf.Tensor, size: int) -> np.ndarray:
    """Features of `images`, padded with zeros to `size` rows when the batch is short.

    Every call then has one shape, so the last, shorter batch of a split does not make
    TensorFlow trace and optimise the whole backbone graph again (seconds for
    InceptionResNetV2). The backbone runs in inference mode, so rows do not interact.
    """
    rows = int(images.shape[0])
    if rows < size:
        images = tf.concat([images, tf.zeros((size - rows, *images.shape[1:]), images.dtype)], 0)
    return np.asarray(extractor.predict_on_batch(images), dtype=np.float32)[:rows]


def iter_feature_batches(
    extractor: keras.Model,
    paths: list[str],
    input_size: tuple[int, int],
    resize_mode: str,
    batch_size: int,
    augment_views: int = 0,
    augmenter: keras.Sequential | None = None,
    root: str | Path = ".",
) -> Iterator[np.ndarray]:
    """Features of `paths` in order, one (b, V, D) float32 batch at a time.

    A file that cannot be decoded raises `ImageError` naming it.
    """
    views = augment_views + 1
    full = images_per_batch(batch_size, views) * views
    dim = int(extractor.output_shape[-1])
    errors: list[ImageError] = []
    ds = view_dataset(
        paths,
        input_size,
        resize_mode,
        images_per_batch(batch_size, views),
        augment_views,
        augmenter,
        root,
        errors,
    )
    iterator = iter(ds)
    # Exactly as many batches as the paths fill, so a stall at the iterator's end of
    # sequence (see view_dataset) cannot hold the results back.
    for _ in range(math.ceil(len(paths) / images_per_batch(batch_size, views))):
        try:
            images = next(iterator)
        except StopIteration:
            return
        except (tf.errors.OpError, ImageError) as err:
            if errors:
                bad = errors[0]
                raise ImageError(
                    bad.path, f"{bad.reason}; fix or remove the file, then rerun `dvc repro`"
                ) from err
            raise
        yield _predict_full_batch(extractor, images, full).reshape(-1, views, dim)


def write_features(
    path: str | Path, batches: Iterator[np.ndarray], shape: tuple[int, int, int]
) -> None:
    """Stream (b, V, D) batches into a float32 `.npy` of `shape`, atomically.

    The array is a memory map on a temporary file beside `path`, renamed into place
    once every row is written; only the current batch is held in memory.
    """
    rows = shape[0]
    with atomic_path(path, suffix=".npy") as tmp:
        if rows == 0:
            np.save(tmp, np.zeros(shape, dtype=np.float32))
            return
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        start = 0
        for batch in batches:
            if start + len(batch) > rows or batch.shape[1:] != shape[1:]:
                raise ValueError(f"{path}: batch of shape {batch.shape} does not fit {shape}")
            out[start : start + len(batch)] = batch
            start += len(batch)
        if start != rows:
            raise ValueError(f"{path}: got {start} rows of features, expected {rows}")
        out.flush()
        del out


def featurize_split(
    extractor: keras.Model,
    frame: pd.DataFrame,
    out_path: str | Path,
    model: ModelParams,
    batch_size: int,
    augment_views: int = 0,
    augmenter: keras.Sequential | None = None,
    root: str | Path = ".",
    desc: str = "featurize",
    progress: bool = True,
) -> dict[str, Any]:
    """Features of every row of `frame` into `out_path` (N, V, D); returns timing facts."""
    views = augment_views + 1
    dim = int(extractor.output_shape[-1])
    paths = frame["path"].astype(str).tolist()
    batches = iter_feature_batches(
        extractor,
        paths,
        tuple(model.input_size),
        model.resize,
        batch_size,
        augment_views,
        augmenter,
        root,
    )
    bar = tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, smoothing=0.1)

    last_batch = [time.perf_counter()]

    def counted() -> Iterator[np.ndarray]:
        for batch in batches:
            bar.update(len(batch))
            last_batch[0] = time.perf_counter()
            yield batch

    start = time.perf_counter()
    with bar:
        write_features(out_path, counted(), (len(paths), views, dim))
    seconds = time.perf_counter() - start
    # The time between the last batch and the end: writing and closing should take well
    # under a second. A long tail (the "55 s wait" once seen after long runs) shows here.
    tail = time.perf_counter() - last_batch[0]
    if tail > TAIL_WARNING_S:
        log.warning("%s: %.1f s passed between the last batch and the end", desc, tail)
    return {
        "rows": len(paths),
        "views": views,
        "dim": dim,
        "seconds": seconds,
        "tail_seconds": tail,
        "images_per_s": len(paths) / seconds if seconds else float("nan"),
        "backbone_inputs_per_s": len(paths) * views / seconds if seconds else float("nan"),
    }


def feature_health(features: np.ndarray) -> dict[str, float]:
    """How usable the features are as they come out of the backbone.

    `mean_abs` and `median_std` (the median over dimensions of the spread across all
    images and views) show the scale; `constant_share` is the share of dimensions with
    no spread at all (see `model.network.feature_moments`). Tiny scales and many constant
    dimensions are typical of a random-init backbone; the head's standardization copes
    with the scale, not with dimensions that carry nothing.
    """
    if features.size == 0:
        return {
            "mean": math.nan,
            "mean_abs": math.nan,
            "median_std": math.nan,
            "constant_share": math.nan,
        }
    mean, std, constant = feature_moments(features)
    chunks = (features[i : i + 1024] for i in range(0, len(features), 1024))
    mean_abs = sum(float(np.abs(c, dtype=np.float64).sum()) for c in chunks) / features.size
    return {
        "mean": float(mean.mean()),
        "mean_abs": mean_abs,
        "median_std": float(np.median(std)),
        "constant_share": float(constant.mean()),
    }


def save_features(
    features_dir: str | Path,
    split: str,
    features: np.ndarray,
    manifest: str | Path,
    weights: WeightsInfo | None = None,
    **fields: Any,
) -> FeatureMeta:
    """Write an in-memory (N, V, D) array as `{split}.npy` + `{split}.json`, atomically,
    in the format `load_features` checks; `fields` sets more `FeatureMeta` fields.

    For benchmarks and tests that need a feature cache without running a backbone.
    """
    features = np.asarray(features, dtype=np.float32)
    with atomic_path(feature_files(features_dir, split)[0], suffix=".npy") as tmp:
        np.save(tmp, features)
    meta = manifest_meta(split, manifest, features.shape, weights=weights, **fields)
    write_feature_meta(features_dir, meta)
    return meta


# ----------------------------------------------------------------------------- loading


def load_features(
    features_dir: str | Path, split: str, manifest_path: str | Path, mmap: bool = False
) -> FeatureSet:
    """The cached features of `split`, checked against its manifest.

    Raises `MissingInputError` / `BadInputError` telling to run `dvc repro featurize` when
    the cache is missing, was computed from another manifest, or has the wrong shape.
    """
    manifest_path = Path(manifest_path)
    npy, meta_path = feature_files(features_dir, split)
    if not npy.is_file():
        raise MissingInputError(f"{npy} not found: {FEATURES_HINT}")
    meta = read_feature_meta(features_dir, split)
    frame = read_manifest(manifest_path)
    if meta.manifest_sha256 != sha256_file(manifest_path):
        raise BadInputError(
            f"{npy} was computed from another version of {manifest_path} "
            f"(sha256 recorded in {meta_path} differs): {FEATURES_HINT}"
        )
    features = np.load(npy, mmap_mode="r" if mmap else None)
    expected = (len(frame), meta.views, meta.dim)
    if features.dtype != np.float32 or features.shape != expected:
        raise BadInputError(
            f"{npy} holds {features.dtype} {features.shape}, but {manifest_path} and {meta_path} "
            f"call for float32 {expected}: {FEATURES_HINT}"
        )
    labels = frame["label"].to_numpy(dtype=np.int64)
    return FeatureSet(features=features, labels=labels, frame=frame, meta=meta)
