"""The power-of-two scale R(x) = 2**round(log2 max|x|), decided exactly.

With E = floor(log2 m), the exponent is E + 1 exactly when m >= sqrt(2) * 2**E. That
boundary is irrational, so no dyadic m (every float and every fixed-point value) sits on it:
the comparison needs no tie rule, only exactness. The float formula of the official code,
2**round(log(m)/log(2)), can flip near the boundary; this one cannot. An all-zero tensor
gets exponent 0 (R = 1), so every quantizer that divides by R returns zeros, never NaN.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from numba import njit

from .arrays import check_domain, in_domain, value_range
from .format import MAX_BITS


def _smallest_double_at_least_sqrt_half() -> float:
    t = math.sqrt(0.5)
    while Fraction(t) ** 2 < Fraction(1, 2):
        t = math.nextafter(t, 1.0)
    while Fraction(math.nextafter(t, 0.0)) ** 2 >= Fraction(1, 2):
        t = math.nextafter(t, 0.0)
    return t


# A float mantissa in [0.5, 1) rounds log2 up iff it is >= sqrt(1/2), i.e. >= this double.
SQRT_HALF_CEIL = _smallest_double_at_least_sqrt_half()

# ROUND_UP_FROM[E] = ceil(sqrt(2) * 2**E): an integer m with floor(log2 m) = E rounds up iff
# m >= ROUND_UP_FROM[E]. sqrt(2**(2E+1)) is irrational, so the ceiling is isqrt + 1.
ROUND_UP_FROM = np.array([math.isqrt(1 << (2 * e + 1)) + 1 for e in range(MAX_BITS)],
                         dtype=np.int64)  # E up to 61: the domain's largest magnitude is 2**61


@njit(cache=True)
def shift_exponent_int(m, table):
    """round(log2 m) for an integer 0 <= m <= 2**61 (0 for m = 0)."""
    if m <= 0:
        return 0
    e = 0
    while (m >> (e + 1)) != 0:
        e += 1
    return e + 1 if m >= table[e] else e


def scale_exponent_of_ints(q: np.ndarray, frac_bits: int) -> int:
    """e of R = 2**e for the tensor q * 2**-frac_bits (integers)."""
    q = np.asarray(q)
    lo, hi = value_range(q)  # one pass: the range gives the domain check and max |q|
    if lo == hi == 0:
        return 0
    if not in_domain(lo, hi):
        check_domain(q)  # raises, naming the domain
    return int(shift_exponent_int(max(-lo, hi), ROUND_UP_FROM)) - int(frac_bits)


def scale_exponent_of_floats(x) -> int:
    """e of R = 2**e for a float tensor (numpy or torch)."""
    if hasattr(x, "detach"):
        m = float(x.detach().abs().max().item()) if x.numel() else 0.0
    else:
        x = np.asarray(x, dtype=np.float64)
        m = float(np.abs(x).max()) if x.size else 0.0
    if not math.isfinite(m):
        raise ValueError("R(x) of a tensor holding NaN or Inf is undefined; check for overflow upstream")
    if m == 0.0:
        return 0
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    return exponent - 1 + (mantissa >= SQRT_HALF_CEIL)
