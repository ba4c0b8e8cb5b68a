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
from numba import njit, prange

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
    if m == 0:  # an empty batch: no error to pass on, nothing summed
        zeros = np.zeros(c, np.int64)
        return (FixedArray(np.zeros(x.q.shape, np.int64), f_dx),
                FixedArray(zeros, fe + xhat_q.frac_bits), FixedArray(zeros.copy(), fe))
    g_max = magnitude_max(error.q) * magnitude_max(gamma)  # bounds |g| = |e gamma|
    if g_max >= DOMAIN_LIMIT:
        raise OverflowError("BatchNorm backward: error x gamma leaves the 62-bit domain")
    # d = x - mean_q on 2**-fd, formed element by element in the kernels: x << x_up - mean_al
    x_up = fd - x.frac_bits
    if x_up and magnitude_max(x.q) >= (1 << max(0, 61 - x_up)):
        raise OverflowError(f"aligning to {fd} fractional bits leaves the 62-bit domain")
    mean_al = [int(v) for v in align(mean_q.q, mean_q.frac_bits, fd)]
    gammas = [int(v) for v in gamma]
    # sums per channel, no g or d arrays: sum g = gamma sum e and
    # sum g d = gamma (sum(e x) 2**x_up - mean_al sum e)
    sum_e, d_gamma = channel_sums(error.q, xhat_q.q)
    sum_ex = channel_sums(error.q, x.q)[1]
    sum_g = [gm * se for gm, se in zip(gammas, sum_e)]
    sum_gd = [gm * ((sex << x_up) - ma * se) for gm, sex, ma, se in zip(gammas, sum_ex, mean_al, sum_e)]
    dx = _dx_rounded(error.q, x.q, gammas, x_up, mean_al, g_max, sum_g, sum_gd,
                     [int(v) for v in std_q.q], m, fd, std_q.frac_bits, fg, f_dx, always_exact)
    return (FixedArray(dx, f_dx), FixedArray(np.array(d_gamma, dtype=object).astype(np.int64),
                                             fe + xhat_q.frac_bits),
            FixedArray(np.array(sum_e, dtype=object).astype(np.int64), fe))


@njit(cache=True, parallel=True)
def _dx_estimated(e, x, gamma, x_up, mean_al, m, sum_g, k1, k2, exact, dx, near_tie):
    """The float64 pass of `_dx_rounded` over (N, C, P) arrays, with g = e gamma and
    d = x 2**x_up - mean_al formed per element: dx where the estimate decides the rounding,
    near_tie = 1 where it does not (the exact way decides there). Returns how many are near
    a tie."""
    n, c, p = e.shape
    count = 0
    for job in prange(n * c):
        b, ch = job // c, job % c
        a1, a2, skip, gm, mean = k1[ch], k2[ch], exact[ch], gamma[ch], mean_al[ch]
        for i in range(p):
            tf = np.float64(m * (e[b, ch, i] * gm) - sum_g[ch])
            df = np.float64((x[b, ch, i] << x_up) - mean)
            estimate = tf * a1 - df * a2
            bound = 8 * _U * (abs(tf) * abs(a1) + abs(df) * abs(a2))
            floor = np.floor(estimate)
            near = skip or abs(estimate - floor - 0.5) <= bound or abs(estimate) >= 2.0 ** 50
            near_tie[b, ch, i] = near
            count += near
            dx[b, ch, i] = 0 if near else np.int64(floor + (estimate - floor > 0.5))
    return count


def _dx_rounded(e, x, gamma, x_up, mean_al, g_max, sum_g, sum_gd, std, m, fd, fs, fg, f_dx,
                always_exact):
    """dx_i = ((m g_i - sum g) s**2 - d_i sum(g d)) / (m s**3), on 2**-f_dx, rounded half to
    even (docs §10), per channel, with g_i = e_i gamma and d_i = x_i 2**x_up - mean_al (the
    caller checked that both stay in the domain; |g| <= g_max). With t_i = m g_i - sum g it
    is t_i K1 - d_i K2, where K1 = 2**(fs - fg + f_dx) / (m s) and
    K2 = sum(g d) 2**(3 fs - fg - 2 fd + f_dx) / (m s**3). In float64 (K1, K2 correctly
    rounded: Python's int division), the estimate is within 8u (|t K1| + |d K2|) of the true
    value (four roundings of at most u relative each, with room); where no half-integer lies
    within that distance, the float rounding is the true one, and the other elements (near a
    tie, or too large) are computed on Python integers. t is formed in int64 where
    m max|g| + |sum g| < 2**63 (else every element goes the exact way)."""
    n, c = e.shape[:2]
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
    if always_exact or m * g_max + max(map(abs, sum_g), default=0) >= 1 << 63:
        exact[:] = True
    sums = np.array([v if not ex else 0 for v, ex in zip(sum_g, exact)], dtype=np.int64)
    e3 = np.ascontiguousarray(e, dtype=np.int64).reshape(n, c, int(np.prod(e.shape[2:])))
    x3 = np.ascontiguousarray(x, dtype=np.int64).reshape(e3.shape)
    dx = np.empty(e3.shape, np.int64)
    near_tie = np.empty(e3.shape, np.bool_)
    near = _dx_estimated(e3, x3, np.array(gamma, np.int64), x_up, np.array(mean_al, np.int64), m,
                         sums, k1, k2, exact, dx, near_tie)
    dx, near_tie = dx.reshape(e.shape), near_tie.reshape(e.shape)
    for i in zip(*np.nonzero(near_tie)) if near else ():  # the exact way, on Python integers
        ch = i[1]
        s = std[ch]
        g_i, d_i = int(e[i]) * gamma[ch], (int(x[i]) << x_up) - mean_al[ch]
        numerator = (m * g_i - sum_g[ch]) * (s * s << (2 * fd)) - d_i * (sum_gd[ch] << (2 * fs))
        shift = fs - fg - 2 * fd + f_dx  # dx = numerator * 2**shift / (m s**3)
        q = ratio_rounded(numerator << max(shift, 0), (m * s ** 3) << max(-shift, 0))
        if not -DOMAIN_LIMIT <= q < DOMAIN_LIMIT:
            raise OverflowError("BatchNorm backward: dx leaves the 62-bit domain")
        dx[i] = q
    return dx
