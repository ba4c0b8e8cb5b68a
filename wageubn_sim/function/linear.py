"""Linear of the torch path (the seed's raised AttributeError on construction)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ._layer import WeightLayer


class Linear(WeightLayer, nn.Linear):
    """nn.Linear plus ``{weight,bias,input,output}_{dec,all}_bit_width``, iostrict, seed."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 iostrict=False, seed=0, **widths):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_weight_layer(widths, iostrict, seed)

    def compute(self, x, weight, bias):
        return F.linear(x, weight, bias)
