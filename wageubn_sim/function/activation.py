"""ReLU and ReLU6 of the torch path: fa = Q(a, k) on the output, E1 on the output error."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ._layer import QuantModule, pick_widths
from .number import directquant

ACTIVATION_WIDTHS = {"input": (8, 16), "acti": (8, 16)}


class _Activation(QuantModule):
    def _init_activation(self, given, iostrict, seed):
        self._init_quant(pick_widths(ACTIVATION_WIDTHS, given, type(self).__name__), iostrict, seed)

    def forward(self, input):
        # `inplace` is accepted for compatibility; quantization never modifies the input.
        a = self.activation(self._io(input, "input"))
        # The official fa has no clip; under iostrict the activation register saturates.
        a = self._register(a, "acti") if self.iostrict else directquant(a, self.acti_dec_bit_width)
        return self._error_e1(a)


class ReLU(_Activation, nn.ReLU):
    def __init__(self, inplace=False, *, iostrict=False, seed=0, **widths):
        super().__init__(inplace)
        self._init_activation(widths, iostrict, seed)

    def activation(self, x):
        return F.relu(x)


class ReLU6(_Activation, nn.ReLU6):
    """An nn.ReLU6 (the seed's subclassed nn.ReLU)."""

    def __init__(self, inplace=False, *, iostrict=False, seed=0, **widths):
        super().__init__(inplace)
        self._init_activation(widths, iostrict, seed)

    def activation(self, x):
        return F.relu6(x)
