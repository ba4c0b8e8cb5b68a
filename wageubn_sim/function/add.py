"""Residual Add: the exact sum of two grid tensors (the official code leaves it unquantized);
under iostrict the sum is held in the output register."""
from __future__ import annotations

import torch.nn as nn

from ._layer import QuantModule, pick_widths

ADD_WIDTHS = {"output": (8, 16)}


class Add(QuantModule, nn.Module):
    def __init__(self, *, iostrict=False, **widths):
        super().__init__()
        self._init_quant(pick_widths(ADD_WIDTHS, widths, "Add"), iostrict)

    def forward(self, a, b):
        return self._io(a + b, "output")
