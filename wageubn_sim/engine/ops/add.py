"""Residual Add: both operands aligned to the finer grid and summed exactly; under iostrict
the sum is held in the output register."""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from ...fixedpoint.arrays import magnitude_max
from ...fixedpoint.format import Format
from ...fixedpoint.modes import Overflow, Rounding
from ..registers import Output, check_aligned, output_stage
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class AddParams:
    out_fmt: Format | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM


@njit(cache=True, inline="always")
def add_into(a, b, out, scale_a, scale_b):
    """out = a * scale_a + b * scale_b for each pair: both operands on the finer grid, summed.
    The one loop of the op: the layer path runs it over a tensor, the execution plan over one
    image."""
    for i in range(out.shape[0]):
        out[i] = a[i] * scale_a + b[i] * scale_b


def add(a, a_frac, b, b_frac, p: AddParams, trace=False) -> Output:
    if a.shape != b.shape:
        raise ValueError(f"Add: operand shapes {a.shape} and {b.shape} differ")
    frac = max(a_frac, b_frac)
    shift_a, shift_b = (check_aligned(magnitude_max(q) if frac > f else 0, f, frac)
                        for q, f in ((a, a_frac), (b, b_frac)))
    total = np.empty(a.shape, np.int64)
    flat = [np.ascontiguousarray(q, dtype=np.int64).reshape(-1) for q in (a, b)]
    add_into(*flat, total.reshape(-1), 1 << shift_a, 1 << shift_b)
    stages = {"sum": total} if trace else {}
    q, fmt, events, flags = output_stage(total, frac, p.out_fmt, p.rounding, p.overflow, trace, stages)
    return Output(q, fmt, events, stages, flags)


def add_range(p: AddParams, arrays, ins):
    (a, fa), (b, fb) = ins
    frac = max(fa, fb)
    return (a[0] << (frac - fa)) + (b[0] << (frac - fb)), (a[1] << (frac - fa)) + (b[1] << (frac - fb)), frac


SPECS = (OpSpec("add", AddParams, lambda p, a, ins, t: add(*ins[0], *ins[1], p, t), add_range, arity=2,
                output_fields=("out_fmt", "rounding", "overflow"), planned=True,
                backward=lambda p, a, ins, out, error: ([error, error], {})),)
