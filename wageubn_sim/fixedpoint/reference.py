"""The arithmetic contract in plain Python integers and Fractions, one element at a time.

A reference in the manner of JAX's ``lax_reference.py``: a few readable lines per
primitive, exact by construction, slow. The numpy/Numba core (`scalar.py`, `arrays.py`, `division.py`, `floats.py`, `scale.py`) and
the torch path are tested against these functions; `docs/arithmetic.md` quotes them.
"""
from __future__ import annotations

import math
from fractions import Fraction

from .format import Format
from .modes import Overflow, Rounding
from .random_bits import U_BITS


def round_fraction(x: Fraction, rounding: Rounding, u: int | None = None) -> int:
    """Round the exact rational ``x`` to an integer. ``u`` is the 32-bit random word of SR."""
    if isinstance(x, bool) or not isinstance(x, (int, Fraction)):
        raise TypeError(f"round_fraction takes an exact rational (int or Fraction), got "
                        f"{type(x).__name__}: a float here would have been rounded already")
    rounding = Rounding.parse(rounding)
    floor = math.floor(x)
    frac = x - floor  # in [0, 1)
    if rounding == Rounding.FLOOR or frac == 0:
        return floor
    half = Fraction(1, 2)
    if rounding == Rounding.HALF_EVEN:
        return floor + (frac > half or (frac == half and floor % 2 == 1))
    if rounding == Rounding.HALF_UP:
        return floor + (frac >= half)
    if rounding == Rounding.HALF_AWAY:
        return floor + (frac > half or (frac == half and x > 0))
    if rounding == Rounding.TOWARD_ZERO:
        return floor + (x < 0)
    if rounding == Rounding.STOCHASTIC:
        if u is None:
            raise ValueError("stochastic rounding needs a random word u")
        magnitude = abs(x)
        m_floor = math.floor(magnitude)
        m_frac = magnitude - m_floor
        threshold = Fraction(u, 1 << U_BITS)
        up = m_frac > threshold or (m_frac == threshold and m_floor % 2 == 1)
        return int(math.copysign(1, x)) * (m_floor + up)
    raise ValueError(f"unknown rounding {rounding!r}")


def overflow_int(n: int, fmt: Format, overflow: Overflow) -> int:
    """Fit the integer ``n`` into ``fmt.bits`` bits."""
    overflow = Overflow.parse(overflow)
    if not fmt.bounded:
        return n
    lo, hi = fmt.min_int, fmt.max_int
    if overflow == Overflow.WRAP:
        return (n - lo) % (1 << fmt.bits) + lo
    if overflow == Overflow.SAT_SYM and fmt.signed:
        lo = -hi
    return min(max(n, lo), hi)


def quantize(x, fmt: Format, rounding: Rounding, overflow: Overflow, u: int | None = None) -> int:
    """The integer q of ``x`` (a float, int or Fraction) in ``fmt``: value q * 2**-frac_bits."""
    scaled = Fraction(x) * Fraction(2) ** fmt.frac_bits
    return overflow_int(round_fraction(scaled, rounding, u), fmt, overflow)


def requantize(q: int, frac_in: int, fmt: Format, rounding: Rounding, overflow: Overflow,
               u: int | None = None) -> int:
    """Move the integer ``q`` (value q * 2**-frac_in) into ``fmt``."""
    return quantize(Fraction(q) / Fraction(2) ** frac_in, fmt, rounding, overflow, u)


def shift_exponent(magnitude) -> int:
    """e of R = 2**e = 2**round(log2 magnitude), for a non-negative magnitude.

    With E = floor(log2 m), e = E + 1 exactly when m >= sqrt(2) * 2**E, i.e. m*m >= 2**(2E+1).
    That boundary is irrational, so a dyadic m never sits on it: there is no tie to break.
    An all-zero tensor (m = 0) gets e = 0, R = 1: every quantizer then returns zeros.
    """
    m = Fraction(magnitude)
    if m < 0:
        raise ValueError("shift_exponent takes a magnitude >= 0")
    if m == 0:
        return 0
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:  # bit_length difference may overshoot by one
        e -= 1
    return e + (m * m >= Fraction(2) ** (2 * e + 1))


def round_sqrt(x) -> int:
    """sqrt(x) rounded half to even, for a rational x >= 0, by comparing squares:
    n is the answer when (n - 1/2)**2 <= x <= (n + 1/2)**2, ties to the even n."""
    x = Fraction(x)
    if x < 0:
        raise ValueError("round_sqrt takes x >= 0")
    n = math.isqrt(math.floor(x))
    while Fraction(2 * n + 1, 2) ** 2 < x:
        n += 1
    while n > 0 and Fraction(2 * n - 1, 2) ** 2 > x:
        n -= 1
    if Fraction(2 * n + 1, 2) ** 2 == x and n % 2 == 1:  # tie between n and n + 1
        n += 1
    return n


INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul of two int32: the high 32 bits of 2 * a * b,
    a * b / 2**31 rounded to nearest, ties toward +infinity (its nudge of 2**30, or 1 - 2**30 for a
    negative product, then C's division toward zero: -0.5 goes to 0, 0.5 to 1);
    INT32_MIN * INT32_MIN, the one overflow, saturates to INT32_MAX."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    return total // (1 << 31) if total >= 0 else -((-total) // (1 << 31))  # C's truncating division


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded half away from zero (0 <= exponent <= 31)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier: ``shift`` < 0 shifts x left by -shift first
    (TFLite's positive exponent), > 0 divides the product by 2**shift after (docs §12)."""
    left, right = max(-shift, 0), max(shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x * (1 << left), multiplier), right)
