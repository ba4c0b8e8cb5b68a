"""Adder2d (AdderNet): y = -sum |x - w| over each window, on one grid, with the conv datapath's
bias, accumulator and output stage (`conv2d.conv2d` with the adder MAC)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import magnitude_max

from ...fixedpoint.scalar import DOMAIN_LIMIT
from ..mac import OP_ADDER
from ..mac.windows import WindowMatrix
from ..registers import Output, align
from .conv2d import (Conv2dParams, check_shapes, col2im, conv2d, conv2d_weight_gradient, error_matrix,
                     layer_input, mac_gradients, mac_range, mac_spec)


def adder2d(x, x_frac, weight, bias, p: Conv2dParams, trace=False) -> Output:
    if p.groups != 1:
        raise ValueError("Adder2d supports groups=1 only")
    return conv2d(x, x_frac, weight, bias, p, trace, op=OP_ADDER)



# ---- backward --------------------------------------------------------------------------------
# Adder2d (AdderNet) backward on integers: AdderNet's gradients, not the true derivative.
#
# With the forward's input x (2**-fx) and weights w (2**-fw) moved to one grid 2**-H,
# H = max(fx, fw, 0) (the grid of both, holding 1), and the output error e (2**-fe, already
# E2-quantized):
#
#     dw[o, k] = sum_{n, l} (x[n, k, l] - w[o, k]) * e[n, o, l]          exact, at 2**-(H + fe)
#              = (the conv weight gradient of x and e) - w[o, k] * sum_{n, l} e[n, o, l]
#     dx       = the windows' dcols[n, k, l] = sum_o HardTanh(w[o, k] - x[n, k, l]) * e[n, o, l]
#                scattered back onto the input (as conv's backward does),  exact, at 2**-(H + fe)
#     db[o]    = sum_{n, l} e[n, o, l]                                     exact, at 2**-fe
#
# where x[n, k, l] is window l's tap k (0 in the padding, as torch's unfold gives) and HardTanh
# clips to [-1, 1] in real terms: to +-2**H on the grid. The torch path (`function/adder.py`)
# computes the same values in float64 (docs §10).
#
# Overflow bound: |dcols| <= O * 2**H * max|e|, and a cell of dx sums at most kh*kw of them;
# both terms of dw are at most (max|x| + max|w|) * N * L * max|e|. Both bounds are checked
# against the 62-bit domain.

@njit(cache=True, parallel=True)
def _clipped_error_sums(cols, w, e, limit, out):
    """out[k, m] = sum_o clip(w[o, k] - cols[k, m], -limit, limit) * e[o, m]; parallel over the
    taps k (each writes its own row), o in order."""
    taps, columns = cols.shape
    for k in prange(taps):
        for o in range(w.shape[0]):
            wk = w[o, k]
            for m in range(columns):
                out[k, m] += min(max(wk - cols[k, m], -limit), limit) * e[o, m]


def adder2d_backward(x: np.ndarray, x_frac: int, weight: np.ndarray, w_frac: int,
                     error: np.ndarray, p: Conv2dParams, with_bias: bool = False):
    """(dx, dw, db, H): exact int64 arrays; dx and dw lie on 2**-(H + fe), db on 2**-fe."""
    check_shapes(x, weight, error, "Adder2d backward")
    if p.groups != 1:
        raise ValueError("Adder2d supports groups=1 only")
    o, c, kh, kw = weight.shape
    oh, ow = error.shape[2:]
    grid = max(x_frac, w_frac, 0)
    x_g = align(np.ascontiguousarray(x, dtype=np.int64), x_frac, grid)
    w_g = align(weight.reshape(o, -1).astype(np.int64), w_frac, grid)
    e_max = magnitude_max(error)
    if (o * kh * kw << grid) * e_max >= DOMAIN_LIMIT or \
            (magnitude_max(x_g) + magnitude_max(w_g)) * error.shape[0] * oh * ow * e_max >= DOMAIN_LIMIT:
        raise OverflowError("Adder2d backward: the error sums may leave the 62-bit domain; "
                            "narrow the error or the input format")
    e_sum = error.sum(axis=(0, 2, 3))  # (O,)
    dw = conv2d_weight_gradient(x_g, weight.shape, error, p).reshape(o, -1) - w_g * e_sum[:, None]
    cols = WindowMatrix(x_g, 0, c, (kh, kw), p.stride, p.padding, p.dilation, (oh, ow))(np.int64)
    dcols = np.zeros(cols.shape, np.int64)
    _clipped_error_sums(cols, w_g, error_matrix(error).astype(np.int64), np.int64(1) << grid, dcols)
    dx = np.zeros(x.shape, np.int64)
    (sh, sw), (ph, pw), (dh, dw_) = p.stride, p.padding, p.dilation
    col2im(dcols, 0, c, kh, kw, sh, sw, ph, pw, dh, dw_, oh, ow, dx)
    return dx, dw.reshape(weight.shape), (e_sum if with_bias else None), grid


def _backward(p: Conv2dParams, arrays, ins, out, error):
    """AdderNet's gradients (`adder2d_backward`), both on the common grid 2**-H."""
    x, x_frac = layer_input(p, ins, out)
    dx, dw, db, grid = adder2d_backward(x, x_frac, arrays["weight"], p.weight_fmt.frac_bits, error.q, p,
                                        "bias" in arrays)
    return mac_gradients(dx, dw, db, grid, grid, error)


SPECS = (mac_spec("adder2d", lambda p, a, ins, t: adder2d(*ins[0], a["weight"], a.get("bias"), p, t), 4,
                   static_range=lambda p, a, ins: mac_range(p, a, ins, adder=True), mac="adder",
                   backward=_backward),)
