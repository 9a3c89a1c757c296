"""The cached training features as batches: each epoch, every image once, in one random view.

`featurize` caches V views of every training image (the plain one and V - 1 augmented);
`CachedViewSampler` uses them the way on-line augmentation would: every epoch sees every
image exactly once, as one of its views picked at random (seeded per epoch).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


class CachedViewSampler(keras.utils.PyDataset):
    """Batches of cached features: each epoch, every image once, in one random view.

    `features` has shape (N, V, D). Batch `i` belongs to epoch `i // steps_per_epoch`;
    the epoch's image order and view choice come from `numpy.random.default_rng((seed,
    epoch))`, so a batch depends only on its index, not on the order in which Keras
    calls the epoch hooks. The dataset spans all `epochs` epochs: pass
    `steps_per_epoch=sampler.steps_per_epoch` and `shuffle=False` to `fit`.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        epochs: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if features.ndim != 3:
            raise ValueError(f"cached features must have shape (N, V, D), got {features.shape}")
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        if len(features) == 0:
            raise ValueError("no training features: data/features/train.npy is empty")
        self.features = features
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.shuffle = shuffle
        self._plan_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    @property
    def num_batches(self) -> int:
        return self.steps_per_epoch * self.epochs

    def __len__(self) -> int:
        return self.num_batches

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(image order, view per image) of one epoch; `views[i]` is image i's view."""
        if epoch not in self._plan_cache:
            rng = np.random.default_rng((self.seed, int(epoch)))
            n, views = self.features.shape[:2]
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._plan_cache = {epoch: (order, rng.integers(0, views, size=n))}
        return self._plan_cache[epoch]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        epoch, step = divmod(int(index), self.steps_per_epoch)
        order, views = self.plan(epoch)
        rows = order[step * self.batch_size : (step + 1) * self.batch_size]
        return self.features[rows, views[rows]], self.labels[rows]

    def dataset(self) -> tf.data.Dataset:
        """The same batches, in the same order, as a `tf.data.Dataset`.

        `fit` on a `PyDataset` calls back into Python for every batch and builds a slow
        iterator per fit; here every epoch's rows are planned up front and gathered
        inside TensorFlow from one copy of the features.
        """
        n, views, dim = self.features.shape
        plans = [self.plan(epoch) for epoch in range(self.epochs)]
        rows = np.stack([order * views + chosen[order] for order, chosen in plans])
        labels = np.stack([self.labels[order] for order, _ in plans])
        table = tf.constant(self.features.reshape(n * views, dim))
        batch = self.batch_size
        epochs = tf.data.Dataset.from_tensor_slices((rows, labels))
        batches = epochs.flat_map(
            lambda r, y: tf.data.Dataset.from_tensor_slices((r, y)).batch(batch)
        )
        return unthreaded(batches.map(lambda r, y: (tf.gather(table, r), y)))


def unthreaded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning and injected prefetch: the same elements,
    and no background threads, whose shutdown held up the end of `fit` by up to 4.7 s."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)
