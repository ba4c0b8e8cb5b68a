"""Backward of ReLU / ReLU6, max pooling, residual add and flatten on integer errors.

The forward quantizers are straight-through, so the error passes these layers unchanged in
value (no rounding): ReLU masks it with x > 0 (ReLU6: 0 < x < 6), max pooling routes each
window's error to the window's first maximum in (kh, kw) order (as torch does), add copies it
to both operands, flatten reshapes it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .pool import PoolParams, max_pool_argmax


def activation_backward(x: np.ndarray, x_frac: int, error: np.ndarray, ceiling: int | None = None):
    """The error where the forward input x (at 2**-x_frac) was inside the active range."""
    if x.shape != error.shape:
        raise ValueError(f"activation backward: input {x.shape} and error {error.shape} differ")
    limit = None  # x < 6 on x's grid: x * 2**-f < 6  <=>  x < 6 * 2**f (rounded up)
    if ceiling is not None:
        limit = (ceiling << x_frac) if x_frac >= 0 else -(-ceiling >> -x_frac)
    x64, e64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (x, error))
    out = np.empty(x64.shape, np.int64)
    bounded = limit is not None and limit <= np.iinfo(np.int64).max  # else no int64 reaches it
    _masked_error(x64.reshape(-1), e64.reshape(-1), limit if bounded else 0, bounded, out.reshape(-1))
    return out


@njit(cache=True, parallel=True)
def _masked_error(x, error, limit, bounded, out):
    """out = error where 0 < x (and x < limit when ``bounded``), else 0: one pass."""
    for i in prange(x.size):
        v = x[i]
        out[i] = error[i] if (v > 0) & ((not bounded) | (v < limit)) else 0


@njit(cache=True, parallel=True)
def _scatter_add(error, argmax, out):
    """out[n, c].flat[argmax[n, c, y, x]] += error[n, c, y, x], per (n, c) plane."""
    n, c = error.shape[:2]
    for job in prange(n * c):
        b, ch = job // c, job % c
        plane = out[b, ch].reshape(-1)
        for y in range(error.shape[2]):
            for x in range(error.shape[3]):
                if argmax[b, ch, y, x] >= 0:  # a window wholly in the padding reads nothing
                    plane[argmax[b, ch, y, x]] += error[b, ch, y, x]


def max_pool2d_backward(x: np.ndarray, error: np.ndarray, p: PoolParams) -> np.ndarray:
    """Each window's error to the window's first maximum (the forward's argmax)."""
    _, argmax = max_pool_argmax(x, p)
    if argmax.shape != error.shape:
        raise ValueError(f"max-pool backward: error {error.shape} != output {argmax.shape}")
    out = np.zeros(x.shape, np.int64)
    _scatter_add(np.ascontiguousarray(error, dtype=np.int64), argmax, out)
    return out


@njit(cache=True, parallel=True)
def _spread(error, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """out[window cells] += error of the window, per (n, c) plane."""
    n, c, h, w = out.shape
    for job in prange(n * c):
        b, ch = job // c, job % c
        for y in range(error.shape[2]):
            for x in range(error.shape[3]):
                for i in range(kh):
                    yi = y * sh + i * dh - ph
                    for j in range(kw):
                        xi = x * sw + j * dw - pw
                        if 0 <= yi < h and 0 <= xi < w:
                            out[b, ch, yi, xi] += error[b, ch, y, x]


def avg_pool2d_backward(x_shape: tuple, error: np.ndarray, error_frac: int, p: PoolParams):
    """Each window's error divided by the divisor, onto every cell of the window. Defined for
    power-of-two divisors only, where the division is exact: the result is the spread error
    on the grid 2**-(error_frac + log2(divisor)). (With other divisors the official float
    division has no exact integer form; see docs §10.)"""
    kh, kw = p.kernel
    divisor = p.divisor_override or kh * kw
    if not p.count_include_pad and any(p.padding):
        raise ValueError("average-pooling backward: count_include_pad=False with padding has "
                         "per-window divisors; not defined for integer training")
    if divisor & (divisor - 1):
        raise ValueError(f"average-pooling backward: divisor {divisor} is not a power of two; "
                         "integer training defines only exact divisions")
    out = np.zeros(x_shape, np.int64)
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    _spread(np.ascontiguousarray(error, dtype=np.int64), kh, kw, sh, sw, ph, pw, dh, dw, out)
    return out, error_frac + divisor.bit_length() - 1
