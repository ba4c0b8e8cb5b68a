"""Adder2d (AdderNet): y = -sum |x - w| over each window, with the WAGEUBN quantizers.

Backward is AdderNet's: dW uses the full-precision difference (x - w) and dX the clipped
HardTanh(w - x), instead of the signs that the true derivative would give.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function
from torch.nn.modules.utils import _pair

from ..engine.geometry import output_size
from ._layer import WeightLayer


def _windows(x, kernel, stride, padding, dilation):
    return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # N, CK, L


class _AdderFunction(Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        cols = _windows(x, weight.shape[2:], stride, padding, dilation)
        w = weight.reshape(weight.shape[0], -1)
        ctx.save_for_backward(cols, w)
        ctx.geometry = (x.shape, weight.shape, stride, padding, dilation)
        return -(cols.unsqueeze(1) - w[None, :, :, None]).abs().sum(2)  # N, O, L

    @staticmethod
    def backward(ctx, grad):  # grad: N, O, L
        cols, w = ctx.saved_tensors
        x_shape, w_shape, stride, padding, dilation = ctx.geometry
        diff = cols.unsqueeze(1) - w[None, :, :, None]  # N, O, CK, L
        grad_w = (diff * grad.unsqueeze(2)).sum((0, 3)).reshape(w_shape)
        grad_cols = (torch.clamp(-diff, -1, 1) * grad.unsqueeze(2)).sum(1)
        grad_x = F.fold(grad_cols, x_shape[2:], w_shape[2:], dilation=dilation, padding=padding,
                        stride=stride)
        return grad_x, grad_w, None, None, None


def adder2d(x, weight, stride=1, padding=0, dilation=1):
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    out_h = output_size(h, kh, stride[0], padding[0], dilation[0])
    out_w = output_size(w, kw, stride[1], padding[1], dilation[1])
    y = _AdderFunction.apply(x, weight, stride, padding, dilation)
    return y.reshape(n, weight.shape[0], out_h, out_w)


class Adder2d(WeightLayer, nn.Module):
    """The seed's Adder2d (AdderNet layer), with dilation; groups other than 1 are refused."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, iostrict=False, seed=0, **widths):
        super().__init__()
        if groups != 1:
            raise ValueError(f"Adder2d supports groups=1 only, got groups={groups}; "
                             "split the layer into per-group Adder2d modules")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_weight_layer(widths, iostrict, seed)

    def compute(self, x, weight, bias):
        y = adder2d(x, weight, self.stride, self.padding, self.dilation)
        return y if bias is None else y + bias[None, :, None, None]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")
