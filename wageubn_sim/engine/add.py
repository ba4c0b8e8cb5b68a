"""Residual Add: both operands aligned to the finer grid and summed exactly; under iostrict
the sum is held in the output register."""
from __future__ import annotations

import dataclasses

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from .registers import Output, align, output_stage


@dataclasses.dataclass(frozen=True)
class AddParams:
    out_fmt: Format | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM


def add(a, a_frac, b, b_frac, p: AddParams, trace=False) -> Output:
    if a.shape != b.shape:
        raise ValueError(f"Add: operand shapes {a.shape} and {b.shape} differ")
    frac = max(a_frac, b_frac)
    total = align(a, a_frac, frac) + align(b, b_frac, frac)
    stages = {"sum": total} if trace else {}
    q, fmt, events, flags = output_stage(total, frac, p.out_fmt, p.rounding, p.overflow, trace, stages)
    return Output(q, fmt, events, stages, flags)
