"""Rounding division of integer tensors, shared by BatchNorm and average pooling.

q = round(num * 2**shift / den): a power-of-two scaling of the exact quotient, decided on
integers by `fixedpoint.division.floor_divide` and `round_quotient` (the contract's division).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..errors import InternalError
from ..fixedpoint.scalar import DOMAIN_LIMIT, TIE
from ..fixedpoint.division import QUOTIENT_ESTIMATE_LIMIT, floor_divide, round_quotient


@njit(cache=True, parallel=True)
def _divide(num, den, shift, rounding, small_quotients, out, flags):
    """num (N, C, P); den (C or 1, P or 1), broadcast."""
    n, c, pixels = num.shape
    per_channel = den.shape[0] > 1
    per_pixel = den.shape[1] > 1
    for job in prange(n * c):
        b, ch = job // c, job % c
        for i in range(pixels):
            d = den[ch if per_channel else 0, i if per_pixel else 0]
            p = num[b, ch, i]
            if shift >= 0:
                p = p << shift
            else:
                d = d << -shift
            q, r = floor_divide(p, d, 1.0 / d, small_quotients)
            out[b, ch, i] = round_quotient(q, r, d, p, rounding)
            flags[b, ch, i] = TIE if 2 * r == d else 0


def divide_scaled(num: np.ndarray, den: np.ndarray, shift: int, rounding) -> tuple:
    """round(num * 2**shift / den) for num (N, C, ...) and den of shape (C, 1...), (1, ...spatial)
    or (C, ...spatial). Returns (q, flags). The callers derive ``den`` from checked params
    (window cells, a divisor override), so a divisor below 1 is a bug of ours, not bad input."""
    n, c = num.shape[:2]
    den2 = np.ascontiguousarray(den, dtype=np.int64).reshape(den.shape[0], -1)
    if den2.size and den2.min() <= 0:
        raise InternalError(f"a rounding division got divisors down to {int(den2.min())}; its "
                            "caller must pass positive ones")
    lo, hi = (int(num.min()), int(num.max())) if num.size else (0, 0)
    mag = max(-lo, hi) << max(shift, 0)
    dmax = int(den2.max(initial=0)) << max(-shift, 0)
    if mag >= DOMAIN_LIMIT or dmax >= DOMAIN_LIMIT:
        raise OverflowError("a rounding division leaves the 62-bit domain; narrow the formats")
    num3 = np.ascontiguousarray(num, dtype=np.int64).reshape(n, c, int(np.prod(num.shape[2:])))
    out = np.empty_like(num3)
    flags = np.empty(num3.shape, np.uint8)
    _divide(num3, den2, int(shift), int(rounding), mag < QUOTIENT_ESTIMATE_LIMIT, out, flags)
    return out.reshape(num.shape), flags.reshape(num.shape)
