"""Adam with each variable's update fused into one XLA kernel, and `make_optimizer`.

Keras runs Adam as about twelve element-wise operations per variable, each a pass over
memory; for the head's 1536 x 1024 kernel they took more time than the forward and
backward passes together (2 CPU cores; README, "Measured"). `FusedAdam` does the same
float32 arithmetic in one pass. XLA would contract a multiply and the add after it into
one FMA instruction (one rounding instead of two), so `exact_xla_available` caps its
instruction set through `XLA_FLAGS` and checks the result bit for bit before it is used.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from petscan.utils.errors import ParamsError

if TYPE_CHECKING:
    from petscan.params.learning import OptimizerParams

log = logging.getLogger(__name__)

XLA_NO_FMA_FLAG = "--xla_cpu_max_isa=AVX"  # AVX has no fused multiply-add instruction


@tf.function(jit_compile=True, autograph=False)
def _adam_kernel(gradient, variable, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """Keras' Adam update of one variable, the same float32 operations in the same order,
    compiled by XLA into one pass over memory instead of about twelve. `variable`, `m`
    and `v` are resource handles, so one trace serves every model of the same shapes."""

    def read(handle):
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=gradient.dtype)

    m_new = read(m) + (gradient - read(m)) * one_minus_beta_1
    v_new = read(v) + (tf.square(gradient) - read(v)) * one_minus_beta_2
    step = (m_new * alpha) / (tf.sqrt(v_new) + epsilon)
    tf.raw_ops.AssignVariableOp(resource=m, value=m_new)
    tf.raw_ops.AssignVariableOp(resource=v, value=v_new)
    tf.raw_ops.AssignSubVariableOp(resource=variable, value=step)


def _handle(variable: Any) -> tf.Tensor:
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@functools.cache
def exact_xla_available() -> bool:
    """Whether `_adam_kernel` reproduces TensorFlow's separate operations bit for bit here.

    XLA's CPU code generator contracts a multiply and the add after it into one FMA
    instruction (one rounding instead of two), which would move every update by up to an
    ulp. Capping its instruction set at AVX before the process's first XLA compilation
    prevents that (XLA_FLAGS, unless it already sets `xla_cpu_max_isa`); this then checks
    it on random numbers, where an FMA shows. False on GPUs, or when the check fails
    (XLA set up earlier in the process): `FusedAdam` then runs Keras' own update.
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_max_isa" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_NO_FMA_FLAG}".strip()
    rng = np.random.default_rng(0)
    grad, var, m, v = rng.normal(size=(4, 4099))
    v = v**2  # a velocity is a mean of squares
    constants = [np.float32(c) for c in (0.37, 1 - 0.9, 1 - 0.999, 1e-7)]
    fused = [tf.Variable(x, dtype=tf.float32) for x in (var, m, v)]
    grad = tf.constant(grad, tf.float32)
    try:
        _adam_kernel(grad, *(x.handle for x in fused), *constants)
    except (tf.errors.OpError, ValueError) as err:  # no XLA in this TensorFlow build
        log.info("fused Adam unavailable (%s): using Keras' Adam", err)
        return False
    var, m, v = (tf.constant(x, tf.float32) for x in (var, m, v))
    alpha, c1, c2, eps = constants
    m = m + (grad - m) * c1
    v = v + (tf.square(grad) - v) * c2
    var = var - (m * alpha) / (tf.sqrt(v) + eps)
    same = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fused, (var, m, v), strict=True)
    )
    if not same:
        log.info("XLA's Adam update differs from TensorFlow's here: using Keras' Adam")
    return same


@keras.saving.register_keras_serializable(package="petscan")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, bit for bit, with each variable's update run as one XLA kernel.

    Keras runs Adam as about twelve separate element-wise operations per variable, each
    a pass over memory; for the head's 1536 x 1024 kernel they took more time than the
    forward and backward passes together (2 CPU cores; README, "Measured"). `_adam_kernel`
    does the same float32 arithmetic in one pass (`exact_xla_available` checks that it
    is the same); AMSGrad runs Keras' update.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = keras.ops.cast(learning_rate, dtype)
        gradient = keras.ops.cast(gradient, dtype)
        local_step = keras.ops.cast(self.iterations + 1, dtype)
        beta_1_power = keras.ops.power(keras.ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = keras.ops.power(keras.ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * keras.ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        index = self._get_variable_index(variable)
        _adam_kernel(
            gradient,
            _handle(variable),
            _handle(self._momentums[index]),
            _handle(self._velocities[index]),
            alpha,
            tf.constant(1 - self.beta_1, dtype),
            tf.constant(1 - self.beta_2, dtype),
            tf.constant(self.epsilon, dtype),
        )
        return None


def make_optimizer(
    optimizer: OptimizerParams, learning_rate: float, fused: bool = False
) -> keras.Optimizer:
    """Params `train.optimizer` (`name: adam`, ...) -> a Keras optimizer; the other keys go
    to its constructor, which checks them (the schema cannot know every optimizer's).

    With `fused`, Adam becomes `FusedAdam` (the same numbers, faster) where XLA computes
    them exactly (`exact_xla_available`).
    """
    settings = optimizer.model_dump()
    name = settings.pop("name")
    settings.pop("learning_rate", None)  # the schedule owns the learning rate
    try:
        built = keras.optimizers.get(
            {"class_name": name, "config": {"learning_rate": learning_rate, **settings}}
        )
    except (ValueError, TypeError) as err:
        raise ParamsError(f"params.yaml train.optimizer: cannot build {name!r}: {err}") from err
    if fused and type(built) is keras.optimizers.Adam and exact_xla_available():
        return FusedAdam.from_config(built.get_config())
    return built
