"""The integer primitives of the contract, one scalar each (Numba, callable from any kernel):
rounding shifts, overflow, and a register move (`requantize_scalar`).

Each is written once and named after what it does (gemmlowp's fixedpoint.h in spirit); the
array loops (`arrays`), the execution plan and every kernel call these. `docs/arithmetic.md`
sections 2 to 4 are the contract, `reference.py` restates it in Python integers.

Domain: every integer lies in the range of s62, -2**61 <= q < 2**61 (`format.MAX_BITS` = 62),
so a magnitude, a sum of two values and the ``half`` constant all stay inside int64.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .format import MAX_BITS
from .modes import (OVERFLOW_SAT, OVERFLOW_SAT_SYM, OVERFLOW_WRAP, ROUND_FLOOR, ROUND_HALF_AWAY,
                    ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_STOCHASTIC, ROUND_TOWARD_ZERO)
from .random_bits import U_BITS

DOMAIN_LIMIT = 1 << (MAX_BITS - 1)  # the domain is -DOMAIN_LIMIT <= q < DOMAIN_LIMIT
TIE = 1  # flag: the dropped bits were exactly one half (a rounding tie)
OVERFLOWED = 2  # flag: the rounded value did not fit and was wrapped or saturated

_INT64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def low_mask(n):
    """2**n - 1 for n >= 0; all 63 magnitude bits once n >= 63 (enough in the domain)."""
    if n >= 63:
        return _INT64_MAX
    return (np.int64(1) << n) - 1


@njit(cache=True, inline="always")
def shift_right_floor(x, n):
    """floor(x / 2**n) for n >= 0: the arithmetic shift, defined for every n."""
    if n >= 63:
        return x >> 63
    return x >> n


@njit(cache=True)
def stochastic_round_up(remainder, shift, u):
    """Whether SR rounds a magnitude up: compare remainder / 2**shift with u / 2**32.

    Returns 1 (remainder above u), 0 (below), or -1 (exactly equal).
    """
    if shift <= U_BITS:
        scaled = remainder << (U_BITS - shift)
        if scaled > u:
            return 1
        return -1 if scaled == u else 0
    head = shift_right_floor(remainder, shift - U_BITS)
    if head != u:
        return 1 if head > u else 0
    return 1 if (remainder & low_mask(shift - U_BITS)) != 0 else -1


@njit(cache=True)
def shift_right_rounded(q, shift, rounding, u):
    """Round q / 2**shift to an integer (shift >= 0) under ``rounding``.

    ``u`` is the 32-bit random word, read only by STOCHASTIC, which rounds the magnitude
    (sign-magnitude, as the official fg does): up when frac > u/2**32, down when below,
    to even when equal; an exact quotient is never moved.
    """
    if shift <= 0:
        return q
    if rounding == ROUND_STOCHASTIC:
        magnitude = -q if q < 0 else q
        result = shift_right_floor(magnitude, shift)
        remainder = magnitude & low_mask(shift)
        if remainder != 0:
            cmp = stochastic_round_up(remainder, shift, u)
            if cmp == 1 or (cmp == -1 and (result & 1) == 1):
                result += 1
        return -result if q < 0 else result
    if shift > MAX_BITS:
        # |q| <= 2**61 = 2**(shift-1) / 2**(shift-62): the quotient lies in [-1/4, 1/4) (62
        # itself takes the general path: -2**61 / 2**62 is the tie -1/2).
        if rounding == ROUND_FLOOR and q < 0:
            return np.int64(-1)
        return np.int64(0)
    floor = q >> shift
    remainder = q & low_mask(shift)  # q - floor * 2**shift, in [0, 2**shift)
    return floor + rounds_up(q, floor, remainder, np.int64(1) << (shift - 1), rounding)


@njit(cache=True, inline="always")
def rounds_up(q, floor, remainder, half, rounding):
    """Whether a deterministic rounding takes floor + 1 for q = floor * 2**s + remainder,
    0 <= remainder < 2**s, half = 2**(s-1). Branch-free, so loops over it vectorize:

      HALF_EVEN    remainder > half, or == half with floor odd
      HALF_UP      remainder >= half
      HALF_AWAY    remainder > half, or == half with q > 0
      TOWARD_ZERO  remainder != 0 with q < 0
      FLOOR        never
    """
    above = remainder > half
    tie = remainder == half
    return (((rounding == ROUND_HALF_EVEN) & (above | (tie & ((floor & 1) == 1))))
            | ((rounding == ROUND_HALF_UP) & (above | tie))
            | ((rounding == ROUND_HALF_AWAY) & (above | (tie & (q > 0))))
            | ((rounding == ROUND_TOWARD_ZERO) & (remainder != 0) & (q < 0)))


@njit(cache=True, inline="always")
def shift_right_rounded_tie(q, shift, mask, half, rounding):
    """(`shift_right_rounded`, whether the dropped bits were one half) for 0 < shift <= MAX_BITS
    and a deterministic rounding, given mask = low_mask(shift), half = 2**(shift-1):
    branch-free, for the loops that vectorize."""
    floor = q >> shift
    remainder = q & mask
    return floor + rounds_up(q, floor, remainder, half, rounding), remainder == half


@njit(cache=True, inline="always")
def shift_right_stochastic_tie(q, shift, mask, half, u):
    """(`shift_right_rounded` STOCHASTIC, whether the dropped bits were one half) for
    0 < shift <= U_BITS, given mask = low_mask(shift), half = 2**(shift-1) and the word u:
    `stochastic_round_up`'s comparison without branches (remainder * 2**(32 - shift) against
    u), for the loops that vectorize."""
    magnitude = -q if q < 0 else q
    floor = magnitude >> shift
    remainder = magnitude & mask
    scaled = remainder << (U_BITS - shift)
    up = (scaled > u) | ((scaled == u) & (remainder != 0) & ((floor & 1) == 1))
    rounded = floor + up
    return -rounded if q < 0 else rounded, remainder == half


@njit(cache=True)
def format_range(bits, signed, overflow):
    """(lo, hi) that saturation clamps to; SAT_SYM drops the most negative value."""
    if signed:
        hi = (np.int64(1) << (bits - 1)) - 1
        lo = -hi if overflow == OVERFLOW_SAT_SYM else -hi - 1
    else:
        hi = (np.int64(1) << bits) - 1
        lo = np.int64(0)
    return lo, hi


@njit(cache=True)
def fit_overflow(n, bits, signed, overflow):
    """Fit n into ``bits`` bits (``bits == 0``: unbounded, n unchanged)."""
    if bits == 0:
        return n
    lo, hi = format_range(bits, signed, overflow)
    if overflow == OVERFLOW_WRAP:
        # n & mask is n mod 2**bits for any int64 n (two's complement), even one that
        # itself wrapped mod 2**64, because 2**bits divides 2**64.
        wrapped = n & low_mask(bits)
        if signed and wrapped > hi:
            wrapped -= np.int64(1) << bits
        return wrapped
    if n > hi:
        return hi
    if n < lo:
        return lo
    return n


@njit(cache=True)
def left_shift_overflows(q, shift, bits, signed, overflow):
    """Whether q * 2**shift (shift >= 0) leaves the format, decided before shifting:
    q * 2**s > hi iff q > hi >> s, and q * 2**s < lo iff q < -((-lo) >> s)."""
    if q == 0:
        return False
    if bits == 0:  # unbounded: the domain, the range of s62
        lo, hi = format_range(MAX_BITS, True, OVERFLOW_SAT)
    else:
        lo, hi = format_range(bits, signed, overflow)
    if shift >= MAX_BITS:
        return True
    return q > (hi >> shift) or q < -((-lo) >> shift)


@njit(cache=True)
def shift_left_fitted(q, shift, bits, signed, overflow):
    """q * 2**shift (shift >= 0) fitted into ``bits``; correct even where q * 2**shift is far
    beyond int64. An unbounded format (bits == 0) raises if the result leaves the domain."""
    if not left_shift_overflows(q, shift, bits, signed, overflow):
        return q << shift
    if bits == 0:
        raise OverflowError("left shift leaves the 62-bit domain of an unbounded format")
    if overflow == OVERFLOW_WRAP:
        return fit_overflow(q << shift if shift < 64 else np.int64(0), bits, signed, overflow)
    lo, hi = format_range(bits, signed, overflow)
    return hi if q > 0 else lo


@njit(cache=True)
def requantize_scalar(q, shift, bits, signed, rounding, overflow, u):
    """q * 2**-shift rounded and fitted: moving q from frac_in to frac_out = frac_in - shift."""
    if shift >= 0:
        return fit_overflow(shift_right_rounded(q, shift, rounding, u), bits, signed, overflow)
    return shift_left_fitted(q, -shift, bits, signed, overflow)


@njit(cache=True, inline="always")
def requantize_right_tie(q, shift, mask, half, bits, signed, rounding, overflow):
    """A register's move of q for 0 < shift <= 62 and a deterministic rounding, branch-free (a
    loop over it vectorizes), given mask = low_mask(shift) and half = 2**(shift-1): (result,
    whether the dropped bits were one half, whether the value overflowed). Every register loop
    over integers (`arrays`, the execution plan) computes its common case through this."""
    rounded, tie = shift_right_rounded_tie(q, shift, mask, half, rounding)
    r = fit_overflow(rounded, bits, signed, overflow)
    return r, tie, r != rounded


@njit(cache=True, inline="always")
def requantize_scalar_vectorizable(q, shift, bits, signed, rounding, overflow):
    """`requantize_scalar` for a deterministic rounding, shifts of 1..62 through the branch-free
    `shift_right_rounded_tie`: a loop over it vectorizes when ``shift`` is loop-invariant.
    Other shifts take `requantize_scalar` (a left shift must stay in an unbounded format's
    domain, as there)."""
    if 0 < shift <= MAX_BITS:
        return requantize_right_tie(q, shift, low_mask(shift), np.int64(1) << (shift - 1), bits, signed,
                                    rounding, overflow)[0]
    return requantize_scalar(q, shift, bits, signed, rounding, overflow, np.int64(0))


@njit(cache=True, inline="always")
def requantize_scalar_flagged(q, shift, bits, signed, rounding, overflow, u):
    """`requantize_scalar` and its flags (TIE: the dropped bits were one half; OVERFLOWED: the
    value was wrapped or saturated). q lies in the domain; with ``bits == 0`` a left shift must
    stay in it (`left_shift_overflows` tells, before)."""
    if shift >= 0:
        rounded = shift_right_rounded(q, shift, rounding, u)
        r = fit_overflow(rounded, bits, signed, overflow)
        flag = TIE if is_exact_tie(q, shift) else 0
        if r != rounded:
            flag |= OVERFLOWED
        return r, flag
    r = shift_left_fitted(q, -shift, bits, signed, overflow)
    return r, OVERFLOWED if left_shift_overflows(q, -shift, bits, signed, overflow) else 0


@njit(cache=True)
def is_exact_tie(q, shift):
    """Whether q / 2**shift lies exactly halfway between two integers (shift >= 1)."""
    if shift <= 0 or shift > MAX_BITS:
        return False
    return (q & low_mask(shift)) == (np.int64(1) << (shift - 1))


# ---- TFLite's double rounding (gemmlowp's fixedpoint.h), docs/arithmetic.md section 12 ----------

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@njit(cache=True, inline="always")
def saturating_rounding_doubling_high_mul(a, b):
    """a * b / 2**31 for int32 a and b, rounded to nearest with ties toward +infinity (the
    nudge, then a division toward zero); the one overflow, INT32_MIN * INT32_MIN, saturates to
    INT32_MAX (gemmlowp's SaturatingRoundingDoublingHighMul)."""
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    ab = np.int64(a) * np.int64(b)
    nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
    total = ab + nudge
    high = total >> 31  # floor; C truncates toward zero: one more for a negative inexact quotient
    return high + 1 if total < 0 and (total & ((np.int64(1) << 31) - 1)) != 0 else high


@njit(cache=True, inline="always")
def rounding_divide_by_pot(x, exponent):
    """x / 2**exponent rounded half away from zero, 0 <= exponent <= 31 (gemmlowp's
    RoundingDivideByPOT)."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)
