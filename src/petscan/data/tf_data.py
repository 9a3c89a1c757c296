"""The image input pipeline: files -> decoded, resized float32 images in tf.data batches.

Every image reaches a network the same way: decoded with PIL (`images.load_resized`) in
a tf.data map, float32 in [0, 255], shape (H, W, 3). `view_dataset` makes the views
`featurize` caches (the plain image, then augmented copies, reproducible by seed);
`image_dataset` gives (images, labels) batches for end-to-end training and evaluation.
`build_augmenter` is the seed notebook's training augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from petscan.data.images import ImageError, load_resized

if TYPE_CHECKING:
    from petscan.params.learning import AugmentationParams

PREFETCH_BATCHES = 2
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # files decoded at once by featurize


def build_augmenter(augmentation: AugmentationParams, seed: int) -> keras.Sequential:
    """The seed notebook's training augmentation, seeded (one seed per layer).

    `augmentation` is params `featurize.augmentation`: rotation (fraction of a full turn), zoom,
    contrast, translation (one factor or [height, width]), fill_mode; a factor of 0
    leaves that layer out. Works on pixel values in [0, 255].
    """
    fill = augmentation.fill_mode
    layers: list[keras.layers.Layer] = []
    if augmentation.rotation:
        layers.append(keras.layers.RandomRotation(augmentation.rotation, fill_mode=fill, seed=seed))
    if augmentation.zoom:
        layers.append(keras.layers.RandomZoom(augmentation.zoom, fill_mode=fill, seed=seed + 1))
    if augmentation.contrast:
        layers.append(
            keras.layers.RandomContrast(augmentation.contrast, value_range=(0, 255), seed=seed + 2)
        )
    translation = augmentation.translation
    if translation:
        height, width = (translation, translation) if np.isscalar(translation) else translation
        layers.append(keras.layers.RandomTranslation(height, width, fill_mode=fill, seed=seed + 3))
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmentation")


def _decoder(
    input_size: tuple[int, int], resize_mode: str, root: str | Path, errors: list[ImageError]
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A tf.data map function: file path -> float32 (H, W, 3) in [0, 255] via PIL.

    A file that cannot be decoded is appended to `errors` (so the caller can name it)
    before the exception stops the pipeline.
    """
    height, width = (int(v) for v in input_size)
    root = Path(root)

    def decode_file(path: bytes) -> np.ndarray:
        file = root / path.decode()
        try:
            return load_resized(file, (height, width), resize_mode)
        except ImageError as err:
            errors.append(err)
            raise

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.numpy_function(decode_file, [path], tf.float32, stateful=False)
        image.set_shape((height, width, 3))
        return image

    return decode


def _add_views(augmenter: keras.Sequential, augment_views: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """One image (H, W, 3) -> its views (V, H, W, 3): the plain image, then K augmented.

    Applied image by image in file order, so the random draws (and the views) depend on
    the seed and the manifest only, not on the batch size.
    """

    def add_views(image: tf.Tensor) -> tf.Tensor:
        copies = augmenter(tf.tile(image[None], [augment_views, 1, 1, 1]), training=True)
        return tf.concat([image[None], copies], axis=0)

    return add_views


def _flatten_views(batch: tf.Tensor) -> tf.Tensor:
    """(B, V, H, W, 3) -> (B * V, H, W, 3), image-major."""
    shape = tf.shape(batch)
    return tf.reshape(batch, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))


def view_dataset(
    paths: list[str],
    input_size: tuple[int, int],
    resize_mode: str,
    images_per_batch: int,
    augment_views: int = 0,
    augmenter: keras.Sequential | None = None,
    root: str | Path = ".",
    errors: list[ImageError] | None = None,
) -> tf.data.Dataset:
    """Batches of `images_per_batch` images as (B * V, H, W, 3) float32 tensors.

    Each file is decoded once (parallel map); its V = 1 + augment_views views are made
    from the decoded image in a sequential map (so augmentation is reproducible by seed,
    whatever the batch size), and batches are prefetched so decoding and augmentation
    overlap with the backbone.
    """
    if augment_views and augmenter is None:
        raise ValueError("augment_views > 0 needs an augmenter (see build_augmenter)")
    decode = _decoder(input_size, resize_mode, root, errors if errors is not None else [])
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), dtype=tf.string))
    ds = ds.map(decode, num_parallel_calls=DECODE_THREADS, deterministic=True)
    if augment_views:
        ds = ds.map(_add_views(augmenter, augment_views))  # sequential: reproducible
        ds = ds.batch(images_per_batch).map(_flatten_views)
    else:
        ds = ds.batch(images_per_batch)
    # tf.data's autotuning off: with it, the iterator stalled 6 to 47 s after the last batch
    # in some runs (the "55 s wait"; none in 3 runs without it). Decoding is not the
    # bottleneck (the backbone is), so fixed parallelism costs nothing.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def image_dataset(
    frame: pd.DataFrame,
    input_size: tuple[int, int],
    resize_mode: str,
    batch_size: int,
    augmenter: keras.Sequential | None = None,
    shuffle: bool = False,
    seed: int = 0,
    root: str | Path = ".",
) -> tf.data.Dataset:
    """(images, labels) batches from manifest rows, for end-to-end training and evaluation.

    Images are float32 (B, H, W, 3) in [0, 255], decoded exactly as `featurize` decodes
    them; labels are int32 (B,). `shuffle` reshuffles every epoch, seeded; `augmenter`
    (training only) is applied per batch.
    """
    decode = _decoder(input_size, resize_mode, root, [])
    paths = tf.constant(frame["path"].astype(str).tolist(), dtype=tf.string)
    labels = tf.constant(frame["label"].to_numpy(dtype=np.int32))
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        ds = ds.shuffle(max(len(frame), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda path, label: (decode(path), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size)
    if augmenter is not None:
        ds = ds.map(lambda images, label: (augmenter(images, training=True), label))
    return ds.prefetch(tf.data.AUTOTUNE)


def images_per_batch(batch_size: int, views: int) -> int:
    """`featurize.batch_size` counts backbone inputs; a batch holds that many views."""
    return max(1, batch_size // views)
