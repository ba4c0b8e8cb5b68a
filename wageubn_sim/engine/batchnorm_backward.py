"""BatchNorm2d training backward on integers (docs/arithmetic.md §10).

The official code differentiates the float statistics; hardware has only the registers, so
the contract differentiates x_hat = (x - mean_q) / std_q with the registers in place of the
float statistics (straight-through, as every WAGEUBN quantizer). Per channel, with the output
error e (2**-fe), g = e * gamma_q (2**-fg, fg = fe + f_gamma) and d = x - mean_q (exact):

    d_beta  = sum e                      exact, 2**-fe
    d_gamma = sum e * xhat_q             exact, 2**-(fe + f_xhat)
    dx_i    = (g_i - mean(g) - d_i/std_q * mean(g * d/std_q)) / std_q
            = ((M g_i - sum g) std_q**2 - d_i sum(g d)) / (M std_q**3)

dx is rounded half to even, once, onto 2**-(f_gamma + DX_BITS - e_R), where R = 2**e_R is the
power-of-two scale of the error (§5): a grid set by the error's values, not by how they are
represented, so that any exact path (the torch twin included) lands on the same integers. It is
E1's grid for the error (7 bits below R) times gamma's, with 8 guard bits; E2 re-grids it at
the layer below. All sums are exact (Python integers).
"""
from __future__ import annotations

import numpy as np

from ..fixedpoint.core import DOMAIN_LIMIT, magnitude_max, ratio_rounded
from ..fixedpoint.format import FixedArray
from ..fixedpoint.scale import scale_exponent_of_ints
from .batchnorm import channel_sums
from .registers import align

DX_BITS = 15  # E1's 7 fractional bits below R, and 8 guard bits
_U = 2.0 ** -53  # float64's unit roundoff


def batchnorm2d_backward(x: FixedArray, error: FixedArray, mean_q: FixedArray, std_q: FixedArray,
                         xhat_q: FixedArray, gamma_q: FixedArray | None = None,
                         always_exact: bool = False):
    """(dx, d_gamma, d_beta) as FixedArrays; std_q holds eps_q already. ``always_exact``
    computes every dx on Python integers (the reference the fast path is tested against)."""
    if x.q.ndim != 4 or x.q.shape != error.q.shape or x.q.shape != xhat_q.q.shape:
        raise ValueError(f"BatchNorm backward: input {x.q.shape}, error {error.q.shape} and xhat "
                         f"{xhat_q.q.shape} must be one N,C,H,W shape")
    if std_q.q.size and std_q.q.min() <= 0:
        raise ValueError("BatchNorm backward: the std register must be positive")
    n, c, h, w = x.q.shape
    m = n * h * w
    fe = error.frac_bits
    f_gamma = gamma_q.frac_bits if gamma_q is not None else 0
    fg = fe + f_gamma
    fd = max(x.frac_bits, mean_q.frac_bits)
    f_dx = f_gamma + DX_BITS - scale_exponent_of_ints(error.q, error.frac_bits)
    gamma = gamma_q.q if gamma_q is not None else np.ones(c, np.int64)
    if magnitude_max(error.q) * magnitude_max(gamma) >= DOMAIN_LIMIT:
        raise OverflowError("BatchNorm backward: error x gamma leaves the 62-bit domain")
    g = error.q * gamma[None, :, None, None]
    d = align(x.q, x.frac_bits, fd) - align(mean_q.q, mean_q.frac_bits, fd)[None, :, None, None]
    sum_e, d_gamma = channel_sums(error.q, xhat_q.q)
    sum_g, sum_gd = channel_sums(g, d)
    dx = _dx_rounded(g, d, sum_g, sum_gd, [int(v) for v in std_q.q], m, fd, std_q.frac_bits, fg,
                     f_dx, always_exact)
    return (FixedArray(dx, f_dx), FixedArray(np.array(d_gamma, dtype=object).astype(np.int64),
                                             fe + xhat_q.frac_bits),
            FixedArray(np.array(sum_e, dtype=object).astype(np.int64), fe))


def _dx_rounded(g, d, sum_g, sum_gd, std, m, fd, fs, fg, f_dx, always_exact):
    """dx_i = ((m g_i - sum g) s**2 - d_i sum(g d)) / (m s**3), on 2**-f_dx, rounded half to
    even (docs §10), per channel. With t_i = m g_i - sum g it is t_i K1 - d_i K2, where
    K1 = 2**(fs - fg + f_dx) / (m s) and K2 = sum(g d) 2**(3 fs - fg - 2 fd + f_dx) / (m s**3).
    In float64 (K1, K2 correctly rounded: Python's int division), the estimate is within
    8u (|t K1| + |d K2|) of the true value (four roundings of at most u relative each, with
    room); where no half-integer lies within that distance, the float rounding is the true one,
    and the other elements (near a tie, or too large) are computed on Python integers."""
    c = g.shape[1]
    t = m * g - np.array(sum_g, dtype=np.int64)[None, :, None, None]
    k1 = np.empty(c)
    k2 = np.empty(c)
    exact = np.zeros(c, bool)
    a, b = fs - fg + f_dx, 3 * fs - fg - 2 * fd + f_dx
    for ch in range(c):
        try:  # int / int is correctly rounded in Python, whatever the sizes
            k1[ch] = (1 << max(a, 0)) / ((m * std[ch]) << max(-a, 0))
            k2[ch] = (sum_gd[ch] << max(b, 0)) / ((m * std[ch] ** 3) << max(-b, 0))
        except OverflowError:  # beyond float64: this channel goes the exact way
            k1[ch], k2[ch], exact[ch] = 0.0, 0.0, True
    tf, df = t.astype(np.float64), d.astype(np.float64)
    k1b, k2b = k1[None, :, None, None], k2[None, :, None, None]
    estimate = tf * k1b - df * k2b
    bound = 8 * _U * (np.abs(tf) * np.abs(k1b) + np.abs(df) * np.abs(k2b))
    floor = np.floor(estimate)
    near_tie = np.abs(estimate - floor - 0.5) <= bound
    near_tie |= exact[None, :, None, None] | (np.abs(estimate) >= 2.0 ** 50) | always_exact
    dx = np.where(near_tie, 0.0, floor + (estimate - floor > 0.5)).astype(np.int64)
    for i in zip(*np.nonzero(near_tie)):  # the exact way, on Python integers
        ch = i[1]
        s = std[ch]
        numerator = (m * int(g[i]) - sum_g[ch]) * (s * s << (2 * fd)) - int(d[i]) * (sum_gd[ch] << (2 * fs))
        shift = fs - fg - 2 * fd + f_dx  # dx = numerator * 2**shift / (m s**3)
        q = ratio_rounded(numerator << max(shift, 0), (m * s ** 3) << max(-shift, 0))
        if not -DOMAIN_LIMIT <= q < DOMAIN_LIMIT:
            raise OverflowError("BatchNorm backward: dx leaves the 62-bit domain")
        dx[i] = q
    return dx
