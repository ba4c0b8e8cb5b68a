"""Conv2d of the torch path: fw weights, register-width bias, E2 on the output error."""
from __future__ import annotations

import torch.nn as nn

from ._layer import WeightLayer


class Conv2d(WeightLayer, nn.Conv2d):
    """nn.Conv2d plus ``{weight,bias,input,output}_{dec,all}_bit_width``, iostrict, seed."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 iostrict=False, seed=0, **widths):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._init_weight_layer(widths, iostrict, seed)

    def compute(self, x, weight, bias):
        # nn.Conv2d._conv_forward honours padding_mode (the seed ignored it).
        return self._conv_forward(x, weight, bias)
