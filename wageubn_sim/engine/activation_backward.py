"""Backward of ReLU / ReLU6, max pooling, residual add and flatten on integer errors.

The forward quantizers are straight-through, so the error passes these layers unchanged in
value (no rounding): ReLU masks it with x > 0 (ReLU6: 0 < x < 6), max pooling routes each
window's error to the window's first maximum in (kh, kw) order (as torch does), add copies it
to both operands, flatten reshapes it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .pool import PoolParams


def activation_backward(x: np.ndarray, x_frac: int, error: np.ndarray, ceiling: int | None = None):
    """The error where the forward input x (at 2**-x_frac) was inside the active range."""
    if x.shape != error.shape:
        raise ValueError(f"activation backward: input {x.shape} and error {error.shape} differ")
    active = x > 0
    if ceiling is not None:  # x < 6 on x's grid: x * 2**-f < 6  <=>  x < 6 * 2**f
        active &= (x < (ceiling << x_frac)) if x_frac >= 0 else (x < -(-ceiling >> -x_frac))
    return np.where(active, error, 0)


@njit(cache=True, parallel=True)
def _max_pool_backward(x, error, kh, kw, sh, sw, ph, pw, dh, dw, out):
    n, c, h, w = x.shape
    oh, ow = error.shape[2:]
    for job in prange(n * c):
        b, ch = job // c, job % c
        for y in range(oh):
            for xo in range(ow):
                best_y, best_x, found = -1, -1, False
                best = np.int64(0)
                for i in range(kh):
                    yi = y * sh + i * dh - ph
                    for j in range(kw):
                        xi = xo * sw + j * dw - pw
                        if 0 <= yi < h and 0 <= xi < w:
                            v = x[b, ch, yi, xi]
                            if not found or v > best:
                                best, best_y, best_x, found = v, yi, xi, True
                if found:
                    out[b, ch, best_y, best_x] += error[b, ch, y, xo]


def max_pool2d_backward(x: np.ndarray, error: np.ndarray, p: PoolParams) -> np.ndarray:
    out = np.zeros(x.shape, np.int64)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    _max_pool_backward(np.ascontiguousarray(x, dtype=np.int64), np.ascontiguousarray(error, dtype=np.int64),
                       kh, kw, sh, sw, ph, pw, dh, dw, out)
    return out
