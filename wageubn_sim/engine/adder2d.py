"""Adder2d (AdderNet): y = -sum |x - w| over each window, on one grid, with the conv datapath's
bias, accumulator and output stage (`conv2d.conv2d` with the adder MAC)."""
from __future__ import annotations

from .conv2d import Conv2dParams, conv2d
from .mac import OP_ADDER
from .registers import Output


def adder2d(x, x_frac, weight, bias, p: Conv2dParams, trace=False) -> Output:
    if p.groups != 1:
        raise ValueError("Adder2d supports groups=1 only")
    return conv2d(x, x_frac, weight, bias, p, trace, op=OP_ADDER)
