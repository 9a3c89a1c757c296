"""Learning-rate schedules (params section `train.lr_schedule`).

Epochs are 0-based, as Keras passes them to `LearningRateScheduler`: with the seed's
`boundaries: [5, 15, 25]` and `values: [5e-5, 1e-4, 5e-5, 1e-5]`, epochs 0-4 use 5e-5,
5-14 use 1e-4, 15-24 use 5e-5 and 25 onwards 1e-5 (what the notebook's code did). The
schema (`LrSchedule`) checks the schedule once: one more value than boundaries, boundaries
increasing whole epochs, values positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from petscan.params.learning import LrSchedule


def piecewise_lr(epoch: int, boundaries: Sequence[int], values: Sequence[float]) -> float:
    """`values[i]` for the first `i` with `epoch < boundaries[i]`, else `values[-1]`."""
    for boundary, value in zip(boundaries, values, strict=False):
        if epoch < boundary:
            return float(value)
    return float(values[-1])


class _Piecewise:
    """A picklable `schedule(epoch, lr)` for `LearningRateScheduler`."""

    def __init__(self, schedule: LrSchedule) -> None:
        self.boundaries = list(schedule.boundaries)
        self.values = list(schedule.values)

    def __call__(self, epoch: int, lr: float | None = None) -> float:
        return piecewise_lr(epoch, self.boundaries, self.values)

    def __repr__(self) -> str:
        return f"piecewise_lr(boundaries={self.boundaries}, values={self.values})"


def lr_scheduler(schedule: LrSchedule, verbose: int = 0) -> keras.callbacks.LearningRateScheduler:
    """`LearningRateScheduler` for params `train.lr_schedule`."""
    return keras.callbacks.LearningRateScheduler(_Piecewise(schedule), verbose=verbose)
