"""A register alone: a tensor moved onto another format (a QONNX Quant or Trunc that no layer
before it can hold as its output register).

    y = overflow(round(x * 2**(f_out - f)))       docs/arithmetic.md section 9
"""
from __future__ import annotations

import dataclasses

from ...fixedpoint.format import Format
from ...fixedpoint.modes import Overflow, Rounding
from ..ranges import same_range
from ..registers import Output, output_stage
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class RequantizeParams:
    out_fmt: Format
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT

    def __post_init__(self):
        if not isinstance(self.out_fmt, Format):
            raise ValueError(f"requantize: out_fmt must be a Format, got {self.out_fmt!r}")


def requantize_op(x, x_frac, p: RequantizeParams, trace=False) -> Output:
    stages = {"input": x} if trace else {}
    q, fmt, events, flags = output_stage(x, x_frac, p.out_fmt, p.rounding, p.overflow, trace, stages)
    return Output(q, fmt, events, stages, flags)


SPECS = (OpSpec("requantize", RequantizeParams, lambda p, a, ins, t: requantize_op(*ins[0], p, t),
                same_range, output_fields=("out_fmt", "rounding", "overflow"), planned=True),)
