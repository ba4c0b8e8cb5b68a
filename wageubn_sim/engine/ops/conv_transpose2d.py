"""ConvTranspose2d (ONNX's ConvTranspose, torch's ConvTranspose2d; docs/arithmetic.md §9,
transposed convolution): each input pixel scatters its products into the output,

    y[n, o, i s - p + k d] += x[n, c, i] w[c, o, k]      (per axis; groups split c and o)

computed as the convolution it equals: the input with s - 1 zeros between its pixels, d (K - 1)
- p zeros around it (output_padding more at the end), convolved (stride 1, dilation d) with
the weights flipped and their in/out axes swapped. A zero adds nothing to a sum, so every
output is the same set of products, summed exactly in `conv2d.conv2d`'s registers (its
accumulator, its MAC order over the equivalent kernel, its output register). Output size per
axis: (H - 1) s - 2 p + d (K - 1) + output_padding + 1. The padding must not exceed d (K - 1):
beyond, the first outputs would fall before the scattered input.

Overflow bound: the equivalent convolution's (`conv2d`), whose input holds the same values and
zeros.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..registers import Output, check_ints
from .conv2d import (Conv2dParams, conv2d, conv2d_backward, layer_input, mac_gradients, mac_range, mac_spec,
                     transposed_kernel)


@dataclasses.dataclass(frozen=True)
class ConvTranspose2dParams(Conv2dParams):
    """Conv2dParams of the transposed convolution (``padding`` removed from each side of the
    full output) and ``output_padding``, added at the end of each axis (below the stride or
    the dilation, as ONNX requires)."""
    output_padding: tuple = (0, 0)

    def __post_init__(self):
        super().__post_init__()
        check_ints("ConvTranspose2d", 0, output_padding=self.output_padding)
        for axis, extra in enumerate(self.output_padding):
            if extra >= max(self.stride[axis], self.dilation[axis]):
                raise ValueError(f"ConvTranspose2d: output_padding={self.output_padding} must be "
                                 "below the stride or the dilation on each axis")


def equivalent(weight: np.ndarray, p: ConvTranspose2dParams) -> tuple:
    """(the convolution's weights (g og, cg, KH, KW), its params) of the transposed one's
    weights (C, og, KH, KW): flipped, in and out swapped within each group."""
    if weight.shape[0] % p.groups:
        raise ValueError(f"ConvTranspose2d: {weight.shape[0]} input channels do not split into "
                         f"{p.groups} groups")
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(Conv2dParams)}
    return transposed_kernel(weight, p.groups), Conv2dParams(**{**fields, "stride": (1, 1), "padding": (0, 0)})


def borders(weight_shape, p: ConvTranspose2dParams) -> tuple:
    """Per axis, the zeros before the scattered input, d (K - 1) - p, and after it, the same
    plus output_padding."""
    before = tuple(d * (k - 1) - pad for d, k, pad in zip(p.dilation, weight_shape[2:], p.padding))
    if min(before) < 0:
        raise ValueError(f"ConvTranspose2d: padding {p.padding} exceeds the kernel's reach "
                         f"dilation * (kernel - 1) = {tuple(b + pad for b, pad in zip(before, p.padding))}")
    return before, tuple(b + extra for b, extra in zip(before, p.output_padding))


def scattered(x: np.ndarray, weight_shape, p: ConvTranspose2dParams) -> np.ndarray:
    """The input as the equivalent convolution reads it: s - 1 zeros between pixels, the borders
    around (`borders`)."""
    n, c, h, w = x.shape
    (bh, bw), (ah, aw) = borders(weight_shape, p)
    sh, sw = p.stride
    up = np.zeros((n, c, bh + (h - 1) * sh + 1 + ah, bw + (w - 1) * sw + 1 + aw), np.int64)
    up[:, :, bh:bh + (h - 1) * sh + 1:sh, bw:bw + (w - 1) * sw + 1:sw] = x
    return up


def conv_transpose2d(x: np.ndarray, x_frac: int, weight: np.ndarray, bias, p: ConvTranspose2dParams,
                     trace: bool = False) -> Output:
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"ConvTranspose2d: input {x.shape} does not fit weights {weight.shape} "
                         "(C_in, C_out / groups, KH, KW)")
    sizes = [(n - 1) * s + d * (k - 1) + extra + 1 - 2 * pad for n, s, d, k, extra, pad in
             zip(x.shape[2:], p.stride, p.dilation, weight.shape[2:], p.output_padding, p.padding)]
    if min(sizes) < 1:
        raise ValueError(f"ConvTranspose2d: an input {x.shape[2]}x{x.shape[3]} gives an output "
                         f"{sizes[0]}x{sizes[1]}: the padding {p.padding} removes all of it")
    w, conv_p = equivalent(weight, p)
    out = conv2d(scattered(np.asarray(x, np.int64), weight.shape, p), x_frac, w, bias, conv_p, trace)
    if trace:  # the layer's own input (after its input register), not the scattered one
        out.trace["input"] = _pixels(out.trace["input"], x.shape, weight.shape, p)
    return out


def _pixels(up: np.ndarray, shape, weight_shape, p: ConvTranspose2dParams) -> np.ndarray:
    """The input's pixels out of a scattered array (`scattered`'s inverse)."""
    (bh, bw), _ = borders(weight_shape, p)
    return np.ascontiguousarray(up[:, :, bh::p.stride[0], bw::p.stride[1]][:, :, :shape[2], :shape[3]])


def conv_transpose2d_range(p: ConvTranspose2dParams, arrays, ins):
    w, conv_p = equivalent(arrays["weight"], p)
    return mac_range(conv_p, {**arrays, "weight": w}, ins)


def conv_transpose2d_backward(p: ConvTranspose2dParams, arrays, ins, out, error):
    """Through the equivalent convolution (`conv2d.conv2d_backward`, exact): the input error
    at the scattered input's pixels, the weight gradient flipped and swapped back."""
    x, x_frac = layer_input(p, ins, out)
    weight = arrays["weight"]
    w, conv_p = equivalent(weight, p)
    dx_up, dw, db = conv2d_backward(scattered(x, weight.shape, p), w, error.q, conv_p, "bias" in arrays)
    return mac_gradients(_pixels(dx_up, x.shape, weight.shape, p), transposed_kernel(dw, p.groups), db,
                         p.weight_fmt.frac_bits, x_frac, error)


SPECS = (mac_spec("conv_transpose2d", lambda p, a, ins, t: conv_transpose2d(*ins[0], a["weight"], a.get("bias"), p, t),
                  4, params=ConvTranspose2dParams, static_range=conv_transpose2d_range,
                  backward=conv_transpose2d_backward),)
