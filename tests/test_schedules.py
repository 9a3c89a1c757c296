"""Piecewise learning-rate schedule (petscan.schedules)."""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest

from petscan.model.schedules import lr_scheduler, piecewise_lr

SEED = {"boundaries": [5, 15, 25], "values": [5.0e-5, 1.0e-4, 5.0e-5, 1.0e-5]}
# The notebook's code, 0-based epochs: e < 5: 5e-5; e < 15: 1e-4; e < 25: 5e-5; else 1e-5.
EXPECTED = [5e-5] * 5 + [1e-4] * 10 + [5e-5] * 10 + [1e-5] * 25


def test_every_epoch_of_the_seed_schedule():
    assert len(EXPECTED) == 50
    got = [piecewise_lr(e, SEED["boundaries"], SEED["values"]) for e in range(50)]
    assert got == EXPECTED
    assert all(type(v) is float for v in got)


def test_edges():
    b, v = SEED["boundaries"], SEED["values"]
    assert piecewise_lr(4, b, v) == 5e-5 and piecewise_lr(5, b, v) == 1e-4
    assert piecewise_lr(14, b, v) == 1e-4 and piecewise_lr(15, b, v) == 5e-5
    assert piecewise_lr(24, b, v) == 5e-5 and piecewise_lr(25, b, v) == 1e-5
    assert piecewise_lr(1000, b, v) == 1e-5
    assert piecewise_lr(0, [], [3e-4]) == 3e-4  # a constant rate


@pytest.mark.parametrize(
    "boundaries, values, message",
    [
        ([5, 15], [1e-4, 1e-5], "one more value than boundaries"),
        ([5, 15, 25], [1e-4] * 5, "one more value than boundaries"),
        ([15, 5], [1e-4, 1e-5, 1e-6], "strictly increasing"),
        ([5, 5], [1e-4, 1e-5, 1e-6], "strictly increasing"),
        ([-1], [1e-4, 1e-5], "whole epoch numbers"),
        ([2.5], [1e-4, 1e-5], "whole epoch numbers"),
        ([5], [1e-4, 0.0], "positive learning rates"),
    ],
)
def test_validation(boundaries, values, message):
    with pytest.raises(ValueError, match=message):
        piecewise_lr(0, boundaries, values)
    with pytest.raises(ValueError, match=message):
        lr_scheduler({"boundaries": boundaries, "values": values})


def test_lr_scheduler_sets_the_rate_during_fit():
    callback = lr_scheduler(SEED)
    assert isinstance(callback, keras.callbacks.LearningRateScheduler)
    assert [callback.schedule(e, 0.1) for e in range(50)] == EXPECTED
    pickle.loads(pickle.dumps(callback.schedule))  # picklable (no lambda)

    seen: list[float] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    x = np.zeros((4, 2), "float32")
    model.fit(x, x[:, :1], epochs=7, verbose=0, callbacks=[callback, Record()])
    np.testing.assert_allclose(seen, EXPECTED[:7], rtol=1e-6)


def test_lr_scheduler_missing_key():
    with pytest.raises(KeyError, match="missing \\['values'\\]"):
        lr_scheduler({"boundaries": [5]})
