"""Piecewise learning-rate schedule (petscan.model.schedules) and its params checks."""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest

from petscan.model.schedules import lr_scheduler, piecewise_lr
from petscan.params.schema import section
from petscan.utils.errors import ParamsError

SEED = {"boundaries": [5, 15, 25], "values": [5.0e-5, 1.0e-4, 5.0e-5, 1.0e-5]}


def schedule(values: dict):
    """`train.lr_schedule` as the schema checks it."""
    return section("train", {"lr_schedule": values}).lr_schedule


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
        ([5, 15], [1e-4, 1e-5], "values needs one more entry than boundaries"),
        ([5, 15, 25], [1e-4] * 5, "values needs one more entry than boundaries"),
        ([15, 5], [1e-4, 1e-5, 1e-6], "boundaries must increase"),
        ([5, 5], [1e-4, 1e-5, 1e-6], "boundaries must increase"),
        ([-1], [1e-4, 1e-5], r"boundaries\[0\] = -1: .*greater than or equal to 0"),
        ([2.5], [1e-4, 1e-5], r"boundaries\[0\] = 2\.5: .*integer"),
        ([5], [1e-4, 0.0], r"values\[1\] = 0\.0: .*greater than 0"),
    ],
)
def test_validation(boundaries, values, message):
    """The schema refuses a malformed schedule once, naming the key; the schedule code
    then never sees one."""
    with pytest.raises(ParamsError, match=rf"train\.lr_schedule.*{message}"):
        schedule({"boundaries": boundaries, "values": values})


def test_lr_scheduler_sets_the_rate_during_fit():
    callback = lr_scheduler(schedule(SEED))
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


def test_lr_schedule_missing_key_takes_the_default_and_must_still_fit():
    with pytest.raises(ParamsError, match="values needs one more entry than boundaries"):
        schedule({"boundaries": [5]})  # the default four values do not fit one boundary
    assert schedule({"values": [1e-3, 5e-4, 1e-4, 1e-5]}).boundaries == [5, 15, 25]
