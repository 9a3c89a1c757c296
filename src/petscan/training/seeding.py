"""Determinism: the same params on the same machine give the same weights and metrics."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    with contextlib.suppress(RuntimeError):  # already enabled in this process
        tf.config.experimental.enable_op_determinism()
