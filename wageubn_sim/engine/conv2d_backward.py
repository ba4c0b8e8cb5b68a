"""Conv2d / Linear backward on integers: the input error and the weight and bias gradients.

With the forward's input x (2**-fx), its fw weights w (2**-fw) and the output error e (2**-fe,
already E2-quantized):

    dx[n, c, y', x'] = sum over the taps that read (y', x') of e[n, o, y, x] * w[o, c, i, j]
                       exact, at 2**-(fe + fw)
    dw[o, c, i, j]   = sum_{n, y, x} x[n, c, y*s + i*d - p, x*s + j*d - p] * e[n, o, y, x]
                       exact, at 2**-(fx + fe)
    db[o]            = sum_{n, y, x} e[n, o, y, x], exact, at 2**-fe

All three are exact integer sums (docs/arithmetic.md §10), computed with the forward's exact
GEMM (`mac.exact_matmul`: BLAS chunks in which every partial sum is an exact float integer).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv2d import Conv2dParams
from ..fixedpoint.core import value_range
from .mac import WindowMatrix, exact_matmul


@njit(cache=True, parallel=True)
def col2im(dcols, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """out[n, c0 + c, y*sh + i*dh - ph, x*sw + j*dw - pw] += dcols[(c, i, j), (n, y, x)].
    Parallel over channels: each channel's taps write only that channel."""
    n, _, h, w = out.shape
    for c in prange(c1 - c0):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for b in range(n):
                    for y in range(oh):
                        yi = y * sh + i * dh - ph
                        if yi < 0 or yi >= h:
                            continue
                        col = (b * oh + y) * ow
                        for x in range(ow):
                            xi = x * sw + j * dw - pw
                            if 0 <= xi < w:
                                out[b, c0 + c, yi, xi] += dcols[row, col + x]


def check_shapes(x, weight, error, what):
    if x.ndim != 4 or error.ndim != 4 or error.shape[1] != weight.shape[0] or error.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: input {x.shape}, weights {weight.shape} and error "
                         f"{error.shape} do not fit")


def error_matrix(error: np.ndarray) -> np.ndarray:
    """The error (N, O, OH, OW) as (O, N*OH*OW), the window matrix's column order."""
    return np.ascontiguousarray(error.transpose(1, 0, 2, 3)).reshape(error.shape[1], -1)


class _TransposedWindows:
    """The window matrix read transposed, (N*OH*OW, K): the reduction of dw runs over the
    pixels. Its int8 digits are the forward's (`WindowMatrix.digit_cols`), transposed as views,
    which the GEMM reads column-major: no int64 window matrix, no transposed copy."""

    def __init__(self, windows: WindowMatrix):
        self.windows = windows

    def __call__(self, dtype):
        return self.windows(dtype).T

    def digit_cols(self, count: int, origin: int) -> list:
        return [cols.T for cols in self.windows.digit_cols(count, origin)]


def _weight_gradient(x, x_range, e_mat, weight_shape, out_size, p: Conv2dParams, g: int):
    """dw of group g: e (O/g, NP) @ windows^T (NP, K), exact, as (O/g, C/g, kh, kw)."""
    og, cg, kh, kw = weight_shape[0] // p.groups, *weight_shape[1:]
    cols = WindowMatrix(x, g * cg, (g + 1) * cg, (kh, kw), p.stride, p.padding, p.dilation,
                        out_size)
    e_g = e_mat[g * og:(g + 1) * og]
    return exact_matmul(e_g, _TransposedWindows(cols), x_range, 1)[0].reshape(og, cg, kh, kw)


def conv2d_weight_gradient(x: np.ndarray, weight_shape, error: np.ndarray, p: Conv2dParams):
    """dw alone (see the module docstring), exact int64."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    e_mat, x_range = error_matrix(error), value_range(x)
    return np.concatenate([_weight_gradient(x, x_range, e_mat, weight_shape, error.shape[2:], p, g)
                           for g in range(p.groups)])


def conv2d_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, p: Conv2dParams,
                    with_bias: bool = False):
    """(dx, dw, db) as exact int64 arrays; see the module docstring for their grids."""
    check_shapes(x, weight, error, "conv backward")
    o, cg, kh, kw = weight.shape
    og = o // p.groups
    (sh, sw), (ph, pw), (dh, dw_) = p.stride, p.padding, p.dilation
    oh, ow = error.shape[2:]
    x = np.ascontiguousarray(x, dtype=np.int64)
    e_mat = error_matrix(error)  # (O, N*OH*OW)
    e_range = value_range(error)
    x_range = value_range(x)
    dx = np.zeros(x.shape, np.int64)
    grad_w = np.empty(weight.shape, np.int64)
    for g in range(p.groups):
        rows = slice(g * og, (g + 1) * og)
        grad_w[rows] = _weight_gradient(x, x_range, e_mat, weight.shape, (oh, ow), p, g)
        # dcols (K, NP) = w^T (K, O/g) @ e (O/g, NP), then scattered back onto the input grid
        w_t = np.ascontiguousarray(weight[rows].reshape(og, -1).T)
        e_g = e_mat[rows]
        dcols = exact_matmul(w_t, lambda dtype: e_g.astype(dtype), e_range, 1)[0]
        col2im(dcols, g * cg, (g + 1) * cg, kh, kw, sh, sw, ph, pw, dh, dw_, oh, ow, dx)
    db = error.sum(axis=(0, 2, 3)) if with_bias else None
    return dx, grad_w, db


def linear_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, with_bias: bool = False):
    """Linear as a 1x1 convolution: x (N, K), weight (O, K), error (N, O)."""
    dx, dw, db = conv2d_backward(x[:, :, None, None], weight[:, :, None, None],
                                 error[:, :, None, None], Conv2dParams(None), with_bias)
    return dx[:, :, 0, 0], dw[:, :, 0, 0], db
