"""ReLU and ReLU6: clamp on the input grid (exact), then Q(a, k) onto the activation grid."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from .registers import Events, Output, align, check_ints, input_stage, output_stage


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


def activation(x, x_frac, p: ActivationParams, trace=False) -> Output:
    stages = {}
    x, x_frac, registers = input_stage(x, x_frac, p.input_register, p.rounding)
    a = np.maximum(x, 0)
    if p.ceiling is not None:  # the ceiling needs a grid that holds it: frac >= 0 suffices
        frac = max(x_frac, 0)
        a = np.minimum(align(a, x_frac, frac), p.ceiling << frac)
        x_frac = frac
    if trace:
        stages.update(input=x, clamped=a)
    q, fmt, registers["output"], flags = output_stage(a, x_frac, p.out_fmt, p.rounding, p.overflow,
                                                      trace, stages)
    return Output(q, fmt, Events.total(registers.values()), stages, flags, registers)
