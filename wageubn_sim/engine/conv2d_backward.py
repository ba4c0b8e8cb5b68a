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

from .conv2d import Conv2dParams, exact_sums
from ..fixedpoint.core import value_range
from .mac import WindowMatrix, exact_matmul, weight_cache


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
    pixels. Its int8 digits are the forward's window rows (`WindowMatrix.rows`, from padded
    NHWC digit planes), row-major (N*OH*OW, K) with K kernel-major (i, j, c): no int64 window
    matrix, no transposed copy; `_weight_gradient` puts K back in channel-major order."""

    def __init__(self, windows: WindowMatrix):
        self.windows = windows

    def __call__(self, dtype):
        return self.windows.to_kernel_major(self.windows(dtype).T)

    def digit_cols(self, count: int, origin: int) -> list:
        return [self.windows.digit_rows(d, count, origin) for d in range(count)]


def _weight_gradient(x, x_range, e_mat, weight_shape, out_size, p: Conv2dParams, g: int):
    """dw of group g: e (O/g, NP) @ windows^T (NP, K), exact, as (O/g, C/g, kh, kw)."""
    og, cg, kh, kw = weight_shape[0] // p.groups, *weight_shape[1:]
    cols = WindowMatrix(x, g * cg, (g + 1) * cg, (kh, kw), p.stride, p.padding, p.dilation,
                        out_size)
    e_g = e_mat[g * og:(g + 1) * og]
    # the rows' K is kernel-major (i, j, c): each sum goes to its channel-major place (c, i, j)
    channel_major = np.arange(cg * kh * kw).reshape(cg, kh * kw).T.ravel()
    sums = exact_matmul(e_g, _TransposedWindows(cols), x_range, 1, columns=channel_major)[0]
    return sums.reshape(og, cg, kh, kw)


def conv2d_weight_gradient(x: np.ndarray, weight_shape, error: np.ndarray, p: Conv2dParams):
    """dw alone (see the module docstring), exact int64."""
    if x.shape[0] == 0:  # an empty batch: no terms
        return np.zeros(weight_shape, np.int64)
    x = np.ascontiguousarray(x, dtype=np.int64)
    e_mat, x_range = error_matrix(error), value_range(x)
    return np.concatenate([_weight_gradient(x, x_range, e_mat, weight_shape, error.shape[2:], p, g)
                           for g in range(p.groups)])


def _spread(count: int, stride: int, start: int, size: int):
    """Where ``count`` error cells land along one axis of e_pad: cell t at start + t * stride,
    kept when inside [0, size). Returns (slice into e_pad, slice of the error), or None."""
    first = max(0, -(-(-start) // stride))  # the first t with start + t * stride >= 0
    last = min(count - 1, (size - 1 - start) // stride)  # the last inside
    if last < first:
        return None
    return (slice(start + first * stride, start + last * stride + 1, stride), slice(first, last + 1))


def conv2d_input_error(x_shape, weight: np.ndarray, error: np.ndarray, p: Conv2dParams) -> np.ndarray:
    """dx as the forward convolution of the error (the transposed convolution): with e_up the
    error spread to every s-th cell (zeros between) and padded by (k - 1) d - p on each side
    (cropped where that is negative; only cells that dx reads are kept),

        dx[n, c, y', x'] = sum_{o, i, j} e_pad[n, o, y' + i d, x' + j d] * w[o, c, kh-1-i, kw-1-j]

    i.e. a stride-1 conv of e_pad with the weights transposed per group and flipped, through
    the forward's exact sums (`conv2d.exact_sums`). Exact int64, at 2**-(fe + fw)."""
    n, c, h, w = x_shape
    o, cg, kh, kw = weight.shape
    og = o // p.groups
    (sh, sw), (ph, pw), (dh, dw_) = p.stride, p.padding, p.dilation
    oh, ow = error.shape[2:]
    e_pad = np.zeros((n, o, h + (kh - 1) * dh, w + (kw - 1) * dw_), np.int64)
    rows = _spread(oh, sh, (kh - 1) * dh - ph, e_pad.shape[2])
    cols = _spread(ow, sw, (kw - 1) * dw_ - pw, e_pad.shape[3])
    if rows and cols:
        e_pad[:, :, rows[0], cols[0]] = error[:, :, rows[1], cols[1]]
    # the weights transposed per group and flipped, in the narrowest integer type that holds
    # them (a fraction of the bytes to permute; the exact sums read any integer type); their
    # range is the forward's (`weight_cache`) when it has seen them
    cache = weight_cache(weight)
    lo, hi = cache["range"] if "range" in cache else value_range(weight)
    narrow = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                  if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    w_t = np.ascontiguousarray(weight.astype(narrow).reshape(p.groups, og, cg, kh, kw)
                               .transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]).reshape(c, og, kh, kw)
    params = Conv2dParams(p.weight_fmt, dilation=p.dilation, groups=p.groups)
    # e_pad holds the error's values and zeros, which every exact method's range includes
    return exact_sums(e_pad, w_t, params, h, w, value_range(error), {})


def conv2d_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, p: Conv2dParams,
                    with_bias: bool = False):
    """(dx, dw, db) as exact int64 arrays; see the module docstring for their grids."""
    check_shapes(x, weight, error, "conv backward")
    grad_w = conv2d_weight_gradient(x, weight.shape, error, p)
    dx = conv2d_input_error(x.shape, weight, error, p)
    db = error.sum(axis=(0, 2, 3)) if with_bias else None
    return dx, grad_w, db


def linear_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, with_bias: bool = False):
    """Linear as a 1x1 convolution: x (N, K), weight (O, K), error (N, O)."""
    dx, dw, db = conv2d_backward(x[:, :, None, None], weight[:, :, None, None],
                                 error[:, :, None, None], Conv2dParams(None), with_bias)
    return dx[:, :, 0, 0], dw[:, :, 0, 0], db
