"""Concat along channels: every input aligned, exactly, to the finest grid among them (the
rule Add follows), then joined; an output register (out_fmt) may hold the result.

    y = concat_c(x_i * 2**(F - f_i)),  F = max_i f_i       docs/arithmetic.md section 9
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...fixedpoint.format import Format
from ...fixedpoint.modes import Overflow, Rounding
from ..registers import Output, align, output_stage
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class ConcatParams:
    out_fmt: Format | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM  # as Add's


def concat(inputs, p: ConcatParams, trace=False) -> Output:
    """``inputs``: [(x, frac), ...], each N, C_i, H, W (or N, C_i)."""
    if not inputs:
        raise ValueError("Concat needs at least one input")
    first = inputs[0][0]
    if any(x.ndim != first.ndim or x.shape[0] != first.shape[0] or x.shape[2:] != first.shape[2:]
           for x, _ in inputs):
        raise ValueError(f"Concat: input shapes {[x.shape for x, _ in inputs]} differ beyond "
                         "the channel axis")
    frac = max(f for _, f in inputs)
    joined = np.concatenate([align(x, f, frac) for x, f in inputs], axis=1)
    stages = {"joined": joined} if trace else {}
    q, fmt, events, flags = output_stage(joined, frac, p.out_fmt, p.rounding, p.overflow, trace, stages)
    return Output(q, fmt, events, stages, flags)


def concat_range(p: ConcatParams, arrays, ins):
    frac = max(f for _, f in ins)
    return min(r[0] << (frac - f) for r, f in ins), max(r[1] << (frac - f) for r, f in ins), frac


SPECS = (OpSpec("concat", ConcatParams, lambda p, a, ins, t: concat(ins, p, t), concat_range, arity=None,
                output_fields=("out_fmt", "rounding", "overflow")),)
