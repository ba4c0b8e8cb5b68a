"""ReLU and ReLU6: clamp on the input grid (exact), then Q(a, k) onto the activation grid."""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import value_range
from ...fixedpoint.format import FixedArray, Format
from ...fixedpoint.modes import Overflow, Rounding
from ..ranges import input_register_range
from ..registers import Events, Output, check_aligned, check_ints, input_stage, output_stage
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class ActivationParams:
    out_fmt: Format | None  # Q(a, k): frac k-1, bounded only under iostrict; None: keep the grid
    ceiling: int | None = None  # 6 for ReLU6
    input_register: Format | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM

    def __post_init__(self):
        if self.ceiling is not None:
            check_ints("activation", 1, pair=False, ceiling=self.ceiling)


@njit(cache=True, inline="always")
def relu_into(values, out, scale, ceiling):
    """out = min(max(v, 0) * scale, ceiling) for each value (``ceiling`` < 0: max(v, 0) alone):
    ReLU, and ReLU6 moved onto a grid that holds its ceiling. The one loop of the op: the layer
    path runs it over a tensor, the execution plan over one image."""
    if ceiling >= 0:
        for i in range(values.shape[0]):
            out[i] = min(max(values[i], 0) * scale, ceiling)
    else:
        for i in range(values.shape[0]):
            out[i] = max(values[i], 0)


def activation(x, x_frac, p: ActivationParams, trace=False) -> Output:
    stages = {}
    x, x_frac, registers = input_stage(x, x_frac, p.input_register, p.rounding)
    scale, ceiling = 1, -1
    if p.ceiling is not None:  # the ceiling needs a grid that holds it: frac >= 0 suffices
        frac = max(x_frac, 0)
        check_aligned(max(value_range(x)[1], 0) if frac > x_frac else 0, x_frac, frac)
        scale, ceiling, x_frac = 1 << (frac - x_frac), p.ceiling << frac, frac
    a = np.empty(x.shape, np.int64)
    relu_into(np.ascontiguousarray(x, dtype=np.int64).reshape(-1), a.reshape(-1), scale, ceiling)
    if trace:
        stages.update(input=x, clamped=a)
    q, fmt, registers["output"], flags = output_stage(a, x_frac, p.out_fmt, p.rounding, p.overflow,
                                                      trace, stages)
    return Output(q, fmt, Events.total(registers.values()), stages, flags, registers)


def activation_range(p: ActivationParams, arrays, ins):
    (lo, hi), frac = input_register_range(*ins[0], p.input_register, p.rounding)
    lo, hi = max(lo, 0), max(hi, 0)
    if p.ceiling is not None:
        f = max(frac, 0)
        lo, hi, frac = min(lo << (f - frac), p.ceiling << f), min(hi << (f - frac), p.ceiling << f), f
    return lo, hi, frac


def _backward(p: ActivationParams, arrays, ins, out, error):
    """The error where the input (as the layer held it) was in the active range."""
    x, x_frac = ins[0]
    frac = p.input_register.frac_bits if p.input_register is not None else x_frac
    dx = activation_backward(out.trace.get("input", x), frac, error.q, p.ceiling)
    return [FixedArray(dx, error.frac_bits)], {}


SPECS = (OpSpec("activation", ActivationParams, lambda p, a, ins, t: activation(*ins[0], p, t),
                activation_range, output_fields=("out_fmt", "rounding", "overflow"),
                input_register=True, planned=True, backward=_backward, error_quantizer="E1"),)


# ---- backward --------------------------------------------------------------------------------

def activation_backward(x: np.ndarray, x_frac: int, error: np.ndarray, ceiling: int | None = None):
    """The error where the forward input x (at 2**-x_frac) was inside the active range."""
    if x.shape != error.shape:
        raise ValueError(f"activation backward: input {x.shape} and error {error.shape} differ")
    limit = None  # x < 6 on x's grid: x * 2**-f < 6  <=>  x < 6 * 2**f (rounded up)
    if ceiling is not None:
        limit = (ceiling << x_frac) if x_frac >= 0 else -(-ceiling >> -x_frac)
    x64, e64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (x, error))
    out = np.empty(x64.shape, np.int64)
    bounded = limit is not None and limit <= np.iinfo(np.int64).max  # else no int64 reaches it
    _masked_error(x64.reshape(-1), e64.reshape(-1), limit if bounded else 0, bounded, out.reshape(-1))
    return out


@njit(cache=True, parallel=True)
def _masked_error(x, error, limit, bounded, out):
    """out = error where 0 < x (and x < limit when ``bounded``), else 0: one pass."""
    for i in prange(x.size):
        v = x[i]
        out[i] = error[i] if (v > 0) & ((not bounded) | (v < limit)) else 0
