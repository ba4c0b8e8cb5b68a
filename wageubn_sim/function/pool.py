"""Pooling of the torch path. Max pooling selects grid values, so it needs no quantizer;
average pooling divides by the window size, so its output is rounded back onto a grid:
Q(mean, k_out) (half to even), saturated to the output register under iostrict."""
from __future__ import annotations

import torch.nn as nn

from ._layer import QuantModule, pick_widths
from .number import directquant

MaxPool2d = nn.MaxPool2d

POOL_WIDTHS = {"output": (8, 16)}


class _AveragePool(QuantModule):
    def _init_pool(self, given, iostrict):
        self._init_quant(pick_widths(POOL_WIDTHS, given, type(self).__name__), iostrict)

    def forward(self, input):
        y = super().forward(input)
        return self._register(y, "output") if self.iostrict else directquant(y, self.output_dec_bit_width)


class AvgPool2d(_AveragePool, nn.AvgPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *, iostrict=False, **widths):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self._init_pool(widths, iostrict)


class AdaptiveAvgPool2d(_AveragePool, nn.AdaptiveAvgPool2d):
    def __init__(self, output_size, *, iostrict=False, **widths):
        super().__init__(output_size)
        self._init_pool(widths, iostrict)
