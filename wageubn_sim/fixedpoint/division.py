"""Division, the contract's one rule for it (docs/arithmetic.md section 5): a rounding division
of integers (Numba, vectorizable: a float64 estimate corrected on integers) and its Python-int
twins for values of any size (a ratio, a square root), each rounded half to even exactly."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .scalar import rounds_up


QUOTIENT_ESTIMATE_LIMIT = 1 << 50  # below it, the float64 estimate is off by one at most


@njit(cache=True, inline="always")
def floor_divide(p, d, inv_d, small_quotients):
    """(floor(p / d), p - floor(p / d) * d) for d > 0 and |p|, d < 2**61; inv_d = 1.0 / d.

    The quotient is estimated in float64 from the reciprocal and corrected on integers until
    0 <= r < d, so the result is exact for every input (integer division is the slowest
    instruction of the datapath, and this lets the loop vectorize). The estimate is off by
    one at most while |p / d| < 2**50; callers that know this (``small_quotients``, a
    loop-invariant flag) skip the final integer fix-up.
    """
    q = np.int64(np.floor(np.float64(p) * inv_d))
    r = p - q * d
    step = np.int64(r >= d) - np.int64(r < 0)  # the off-by-one fix, branch-free
    q += step
    r -= step * d
    if not small_quotients and (r < 0 or r >= d):
        q += r // d
        r -= (r // d) * d
    return q, r


@njit(cache=True, inline="always")
def round_quotient(q, r, d, p, rounding):
    """Round p / d given its floor quotient q and remainder r (0 <= r < d); not STOCHASTIC.
    Branch-free on the data, so that loops over it vectorize."""
    # the rule of rounds_up with the remainder and the half both doubled: exact for odd d
    return q + rounds_up(p, q, 2 * r, d, rounding)


@njit(cache=True)
def divide_rounded(p, d, rounding):
    """Round p / d to an integer (d > 0), for every mode but STOCHASTIC. |p|, d < 2**61."""
    q, r = floor_divide(p, d, 1.0 / d, False)
    return round_quotient(q, r, d, p, rounding)


def ratio_rounded(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half to even, exactly, on Python integers (den > 0)."""
    q, r = divmod(numerator, denominator)
    return q + (2 * r > denominator or (2 * r == denominator and q % 2 == 1))


def sqrt_rounded(numerator: int, denominator: int) -> int:
    """sqrt(numerator / denominator) rounded half to even, exactly, on Python integers.

    With t = isqrt(floor(4 * num / den)) = floor(2 * sqrt(v)): an even t puts sqrt(v) in
    [t/2, t/2 + 1/2), so the answer is t/2; an odd t puts it in [t/2, t/2 + 1/2) with
    t/2 = n + 1/2, so the answer is n + 1, except on the exact tie 4 * num == t*t * den,
    which goes to the even one of n, n + 1.
    """
    if numerator < 0 or denominator <= 0:
        raise ValueError("sqrt_rounded takes numerator >= 0 and denominator > 0")
    t = math.isqrt((4 * numerator) // denominator)
    n = t // 2
    if t % 2 == 0:
        return n
    if 4 * numerator == t * t * denominator:
        return n if n % 2 == 0 else n + 1
    return n + 1
