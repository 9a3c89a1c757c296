"""Learning-rate schedules (params section `train.lr_schedule`).

Epochs are 0-based, as Keras passes them to `LearningRateScheduler`: with the seed's
`boundaries: [5, 15, 25]` and `values: [5e-5, 1e-4, 5e-5, 1e-5]`, epochs 0-4 use 5e-5,
5-14 use 1e-4, 15-24 use 5e-5 and 25 onwards 1e-5 (what the notebook's code did).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras


def check_piecewise(boundaries: Sequence[int], values: Sequence[float]) -> None:
    """Raise a ValueError naming the params key when the schedule is malformed."""
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"params.yaml train.lr_schedule needs one more value than boundaries, got "
            f"{len(boundaries)} boundaries and {len(values)} values"
        )
    if any(int(b) != b or b < 0 for b in boundaries):
        raise ValueError(
            f"train.lr_schedule.boundaries must be whole epoch numbers >= 0, got {list(boundaries)}"
        )
    if any(b >= a for b, a in zip(boundaries, boundaries[1:], strict=False)):
        raise ValueError(
            f"train.lr_schedule.boundaries must be strictly increasing, got {list(boundaries)}"
        )
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(
            f"train.lr_schedule.values must be positive learning rates, got {list(values)}"
        )


def piecewise_lr(epoch: int, boundaries: Sequence[int], values: Sequence[float]) -> float:
    """`values[i]` for the first `i` with `epoch < boundaries[i]`, else `values[-1]`."""
    check_piecewise(boundaries, values)
    for boundary, value in zip(boundaries, values, strict=False):
        if epoch < boundary:
            return float(value)
    return float(values[-1])


class _Piecewise:
    """A picklable `schedule(epoch, lr)` for `LearningRateScheduler`."""

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        check_piecewise(boundaries, values)
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]

    def __call__(self, epoch: int, lr: float | None = None) -> float:
        return piecewise_lr(epoch, self.boundaries, self.values)

    def __repr__(self) -> str:
        return f"piecewise_lr(boundaries={self.boundaries}, values={self.values})"


def lr_scheduler(
    schedule_params: dict[str, Any], verbose: int = 0
) -> keras.callbacks.LearningRateScheduler:
    """`LearningRateScheduler` for params `train.lr_schedule` ({boundaries, values})."""
    missing = {"boundaries", "values"} - set(schedule_params)
    if missing:
        raise KeyError(f"params.yaml train.lr_schedule is missing {sorted(missing)}")
    schedule = _Piecewise(schedule_params["boundaries"], schedule_params["values"])
    return keras.callbacks.LearningRateScheduler(schedule, verbose=verbose)
