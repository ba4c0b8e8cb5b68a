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

from ..fixedpoint.format import FixedArray
from ..fixedpoint.scale import scale_exponent_of_ints

DX_BITS = 15  # E1's 7 fractional bits below R, and 8 guard bits


def _round_half_even(num, den):
    """num / den rounded half to even; object arrays of Python ints, den > 0."""
    q, r = num // den, num % den
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up.astype(object)


def batchnorm2d_backward(x: FixedArray, error: FixedArray, mean_q: FixedArray, std_q: FixedArray,
                         xhat_q: FixedArray, gamma_q: FixedArray | None = None):
    """(dx, d_gamma, d_beta) as FixedArrays; std_q holds eps_q already."""
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
    fs = std_q.frac_bits
    f_dx = f_gamma + DX_BITS - scale_exponent_of_ints(error.q, error.frac_bits)
    e = error.q.astype(object)
    d_beta = error.q.sum(axis=(0, 2, 3))
    d_gamma = (e * xhat_q.q.astype(object)).sum(axis=(0, 2, 3))
    dx = np.empty(x.q.shape, dtype=object)
    for ch in range(c):
        g = e[:, ch] * (int(gamma_q.q[ch]) if gamma_q is not None else 1)
        d = (x.q[:, ch].astype(object) << (fd - x.frac_bits)) - (int(mean_q.q[ch]) << (fd - mean_q.frac_bits))
        s = int(std_q.q[ch])
        numerator = (m * g - g.sum()) * (s * s << (2 * fd)) - d * ((g * d).sum() << (2 * fs))
        # dx = numerator * 2**(fs - fg - 2 fd) / (m s**3); on 2**-f_dx:
        shift = fs - fg - 2 * fd + f_dx
        num = numerator * (1 << shift) if shift >= 0 else numerator
        den = m * s ** 3 * (1 << -shift if shift < 0 else 1)
        dx[:, ch] = _round_half_even(num, den)
    return (FixedArray(dx.astype(np.int64), f_dx),
            FixedArray(np.array([int(v) for v in d_gamma], dtype=np.int64), fe + xhat_q.frac_bits),
            FixedArray(d_beta.astype(np.int64), fe))
