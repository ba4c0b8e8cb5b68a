"""The fixed-point core: rounding shifts and overflow on int64, and float-to-grid quantization.

Two families, one contract (`docs/arithmetic.md`, reference in `reference.py`):

* integer primitives (Numba, scalar functions usable from other kernels, plus array
  wrappers): ``shift_right_rounded``, ``fit_overflow``, ``requantize``;
* float primitives written once over the array namespace ``xp`` (numpy or torch):
  ``round_to_integer``, ``fit_overflow_float``, ``quantize_to_grid``. The torch path runs
  these on float64 tensors, so its fake-quant values equal the integer core's q * 2**-f.

Domain: every integer lies in the range of s62, -2**61 <= q < 2**61 (`format.MAX_BITS` = 62),
so a magnitude, a sum of two values and the ``half`` constant all stay inside int64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .format import MAX_BITS, Format
from .modes import Overflow, Rounding
from .random_bits import U_BITS

DOMAIN_LIMIT = 1 << (MAX_BITS - 1)  # the domain is -DOMAIN_LIMIT <= q < DOMAIN_LIMIT
TIE = 1  # flag: the dropped bits were exactly one half (a rounding tie)
OVERFLOWED = 2  # flag: the rounded value did not fit and was wrapped or saturated

_HALF_EVEN = int(Rounding.HALF_EVEN)
_HALF_UP = int(Rounding.HALF_UP)
_HALF_AWAY = int(Rounding.HALF_AWAY)
_FLOOR = int(Rounding.FLOOR)
_TOWARD_ZERO = int(Rounding.TOWARD_ZERO)
_STOCHASTIC = int(Rounding.STOCHASTIC)
_WRAP = int(Overflow.WRAP)
_SAT = int(Overflow.SAT)
_SAT_SYM = int(Overflow.SAT_SYM)
_INT64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)
_WORD_SCALE = 2.0 ** -U_BITS  # a random word u is the fraction u * 2**-32


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
    if rounding == _STOCHASTIC:
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
        if rounding == _FLOOR and q < 0:
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
    return (((rounding == _HALF_EVEN) & (above | (tie & ((floor & 1) == 1))))
            | ((rounding == _HALF_UP) & (above | tie))
            | ((rounding == _HALF_AWAY) & (above | (tie & (q > 0))))
            | ((rounding == _TOWARD_ZERO) & (remainder != 0) & (q < 0)))


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
        lo = -hi if overflow == _SAT_SYM else -hi - 1
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
    if overflow == _WRAP:
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
        lo, hi = format_range(MAX_BITS, True, _SAT)
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
    if overflow == _WRAP:
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
def requantize_scalar_vectorizable(q, shift, bits, signed, rounding, overflow):
    """`requantize_scalar` for a deterministic rounding, shifts of 1..62 through the branch-free
    `shift_right_rounded_tie`: a loop over it vectorizes when ``shift`` is loop-invariant.
    Other shifts take `requantize_scalar` (a left shift must stay in an unbounded format's
    domain, as there)."""
    if 0 < shift <= MAX_BITS:
        rounded = shift_right_rounded_tie(q, shift, low_mask(shift), np.int64(1) << (shift - 1),
                                          rounding)[0]
        return fit_overflow(rounded, bits, signed, overflow)
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


@njit(cache=True, parallel=True)
def _requantize_flat(q, shift, bits, signed, rounding, overflow, u):
    """Returns (result, flags, counts): flags per element hold TIE and OVERFLOWED; counts =
    [ties, overflowed, underflows (nonzero in, zero out, not overflowed), outside (q outside
    the domain), left shifts that leave an unbounded format's domain]. Nothing raises in the
    parallel loop (exceptions do not propagate out of it): the caller raises on the counts,
    and elements outside the domain hold unspecified values."""
    out = np.empty_like(q)
    flags = np.empty(q.size, dtype=np.uint8)
    has_u = u.size > 0
    ties = 0
    overflowed = 0
    underflows = 0
    outside = 0
    unbounded_overflows = 0
    stochastic = rounding == _STOCHASTIC
    if 0 < shift <= MAX_BITS and (not stochastic or (shift <= U_BITS and has_u)):
        # the common cases (G's stochastic one too), branch-free: the loop vectorizes
        mask, half = low_mask(shift), np.int64(1) << (shift - 1)
        for i in prange(q.size):
            v = q[i]
            outside += (v >= DOMAIN_LIMIT) | (v < -DOMAIN_LIMIT)
            if stochastic:
                rounded, tie = shift_right_stochastic_tie(v, shift, mask, half, u[i])
            else:
                rounded, tie = shift_right_rounded_tie(v, shift, mask, half, rounding)
            r = fit_overflow(rounded, bits, signed, overflow)
            over = r != rounded
            out[i] = r
            flags[i] = tie | (over << 1)  # TIE | OVERFLOWED
            ties += tie
            overflowed += over
            underflows += (r == 0) & (v != 0) & (not over)
        return out, flags, np.array([ties, overflowed, underflows, outside, 0])
    for i in prange(q.size):
        v = q[i]
        ui = u[i] if has_u else np.int64(0)
        if v >= DOMAIN_LIMIT or v < -DOMAIN_LIMIT:
            outside += 1
            v = np.int64(0)
        if shift < 0 and bits == 0 and left_shift_overflows(v, -shift, bits, signed, overflow):
            unbounded_overflows += 1
            r = np.int64(0)
            flag = 0
        else:
            r, flag = requantize_scalar_flagged(v, shift, bits, signed, rounding, overflow, ui)
        out[i] = r
        flags[i] = flag
        ties += flag & TIE
        overflowed += (flag & OVERFLOWED) >> 1
        underflows += r == 0 and v != 0 and (flag & OVERFLOWED) == 0
    return out, flags, np.array([ties, overflowed, underflows, outside, unbounded_overflows])


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


def _bits_code(fmt: Format) -> int:
    return 0 if fmt.bits is None else fmt.bits


@njit(cache=True, parallel=True)
def _value_range(flat):
    lo, hi = flat[0], flat[0]
    for i in prange(flat.size):
        lo = min(lo, flat[i])
        hi = max(hi, flat[i])
    return lo, hi


def value_range(q: np.ndarray) -> tuple[int, int]:
    """(min, max) of an integer array in one parallel pass; (0, 0) when empty."""
    if q.size == 0:
        return 0, 0
    lo, hi = _value_range(np.ascontiguousarray(q).reshape(-1))
    return int(lo), int(hi)


def magnitude_max(q: np.ndarray) -> int:
    """max |q| as a Python int (no int64 overflow at -2**63); 0 when empty."""
    lo, hi = value_range(q)
    return max(-lo, hi)


def in_domain(lo: int, hi: int) -> bool:
    """Whether integers from lo to hi lie in the domain, the range of s62."""
    return -DOMAIN_LIMIT <= lo and hi < DOMAIN_LIMIT


def check_domain(q: np.ndarray, what: str = "input") -> None:
    if not in_domain(*value_range(q)):
        raise OverflowError(f"{what} holds an integer of more than 62 bits; the core supports "
                            f"-2**61 <= q < 2**61 (formats of at most {MAX_BITS} bits)")


def exact_int64(a, what: str) -> np.ndarray:
    """An integer array as int64, never wrapped: refuses other dtypes (a float with a fraction,
    a bool, a complex) and values int64 cannot hold (a uint64 from 2**63 on)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} has dtype {a.dtype}; it must hold integers")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) >= 1 << 63:
        raise ValueError(f"{what} holds {int(a.max())}, beyond int64")
    return a.astype(np.int64, copy=False)


def check_random_words(u, shape, rounding: Rounding):
    """The random words of SR, validated: one uint32 per element (numpy or torch)."""
    if rounding != Rounding.STOCHASTIC:
        return None
    if u is None:
        raise ValueError("stochastic rounding needs random words: pass u (uint32, one per "
                         "element), e.g. from wageubn_sim.fixedpoint.random_u32")
    if isinstance(u, np.ndarray) and u.dtype != np.uint32:
        raise TypeError(f"random words must be uint32, got {u.dtype}")
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"random words have shape {tuple(u.shape)}, the tensor has {tuple(shape)}")
    return u


def requantize(q, frac_in: int, fmt: Format, rounding=Rounding.HALF_EVEN,
               overflow=Overflow.SAT, u=None) -> np.ndarray:
    """Integers q at 2**-frac_in moved into ``fmt`` (int64 array out)."""
    if np.asarray(q).dtype.kind not in "iu":
        raise TypeError(f"requantize takes integers, got dtype {np.asarray(q).dtype}; "
                        "use quantize for floats")
    return requantize_flagged(q, frac_in, fmt, rounding, overflow, u)[0]


def requantize_flagged(q, frac_in: int, fmt: Format, rounding=Rounding.HALF_EVEN,
                       overflow=Overflow.SAT, u=None):
    """`requantize`, also returning per-element flags (TIE, OVERFLOWED) as uint8."""
    out, flags, _ = requantize_counted(q, frac_in, fmt, rounding, overflow, u)
    return out, flags


def requantize_counted(q, frac_in: int, fmt: Format, rounding=Rounding.HALF_EVEN,
                       overflow=Overflow.SAT, u=None):
    """`requantize_flagged` plus its counts in one pass: a dict with ties, overflowed (wrapped
    or saturated) and underflows (nonzero values that became zero without overflowing)."""
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    q = np.asarray(q, dtype=np.int64)
    u = check_random_words(u, q.shape, rounding)
    words = np.empty(0, np.int64) if u is None else u.astype(np.int64).ravel()
    out, flags, counts = _requantize_flat(np.ascontiguousarray(q).ravel(),
                                          int(frac_in) - fmt.frac_bits, _bits_code(fmt),
                                          fmt.signed, int(rounding), int(overflow), words)
    if counts[3]:
        check_domain(q)
    if counts[4]:
        raise OverflowError("left shift leaves the 62-bit domain of an unbounded format")
    return out.reshape(q.shape), flags.reshape(q.shape), {
        "ties": int(counts[0]), "overflowed": int(counts[1]), "underflows": int(counts[2])}


# ---- float primitives, shared by numpy and torch -------------------------------------------

def array_namespace(x):
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return np


def is_odd(n):
    """Whether each integer-valued float is odd: exact (halving a binary float is exact, and so
    is floor), and unlike fmod (a libm loop, 50x slower here) vectorised."""
    half = n * 0.5
    return array_namespace(n).floor(half) != half


def round_to_integer(y, rounding: Rounding, u=None):
    """Round each float64 element of y to an integer-valued float64 (same contract as
    ``shift_right_rounded``). ``y - floor(y)`` is exact in binary floating point, so no
    comparison here is approximate. ``u``: uint32 words as float64, for STOCHASTIC."""
    xp = array_namespace(y)
    if rounding == Rounding.HALF_EVEN:  # IEEE's round to nearest even (rint): exact, one pass
        return xp.round(y)
    floor = xp.floor(y)
    frac = y - floor
    if rounding == Rounding.FLOOR:
        return floor
    if rounding == Rounding.HALF_UP:
        up = frac >= 0.5
    elif rounding == Rounding.HALF_AWAY:
        up = (frac > 0.5) | ((frac == 0.5) & (y > 0))
    elif rounding == Rounding.TOWARD_ZERO:
        up = (frac > 0) & (y < 0)
    elif rounding == Rounding.STOCHASTIC:
        if u is None:
            raise ValueError("stochastic rounding needs random words u (uint32 per element)")
        magnitude = xp.abs(y)
        m_floor = xp.floor(magnitude)
        m_frac = magnitude - m_floor
        threshold = u * 2.0 ** -U_BITS  # exact: 32 bits fit a float64 mantissa
        up = (m_frac > threshold) | ((m_frac == threshold) & (m_frac > 0) & is_odd(m_floor))
        return xp.sign(y) * (m_floor + up)
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    return floor + up


# The widest bounded formats whose every integer, rails included, is a float64: the float path
# is exact up to these and refuses wider ones (the integer `quantize` takes any width).
FLOAT_EXACT_BITS = {True: 54, False: 53}  # signed, unsigned
# Scaled values below this are subnormal: the scaling by 2**f may have rounded them.
SMALLEST_NORMAL = 2.0 ** -1022


def check_float_exact(fmt: Format) -> None:
    if fmt.bounded and fmt.bits > FLOAT_EXACT_BITS[fmt.signed]:
        raise ValueError(
            f"{fmt.describe()}: the float path is exact up to s{FLOAT_EXACT_BITS[True]} and "
            f"u{FLOAT_EXACT_BITS[False]} (a float64 holds no wider rails); use "
            "wageubn_sim.fixedpoint.quantize, which computes on integers")


def scale_exactly(x, frac_bits: int):
    """x * 2**frac_bits, refusing a nonzero x whose scaled value is below float64's normal range
    (the product could have been rounded there, silently)."""
    xp = array_namespace(x)
    with np.errstate(over="ignore"):  # a product beyond float64 is inf: callers clip it
        y = x * 2.0 ** frac_bits  # a power of two: exact while the result is normal
    if frac_bits < 0:  # only scaling down can leave the normal range
        tiny = (xp.abs(y) < SMALLEST_NORMAL) & (x != 0)
        if bool(tiny.any()):
            raise ValueError(f"a value scaled by 2**{frac_bits} falls below float64's normal range "
                             "(2**-1022), where the scaling rounds; give the format more "
                             "fractional bits or flush such values to zero first")
    return y


def fit_overflow_float(n, fmt: Format, overflow: Overflow):
    """``fit_overflow`` on integer-valued floats (exact: fmod is exact in binary floats), for
    formats within `FLOAT_EXACT_BITS`."""
    if not fmt.bounded:
        return n
    xp = array_namespace(n)
    lo, hi = float(fmt.min_int), float(fmt.max_int)
    if overflow == Overflow.WRAP:
        # fmod is exact, and so is each correction below (Sterbenz's lemma for the signed one;
        # an unsigned result is at most 2**53 - 1)
        modulus = float(1 << fmt.bits)
        r = xp.fmod(n, modulus)
        r = xp.where(r > hi, r - modulus, r)
        return xp.where(r < lo, r + modulus, r)
    if overflow == Overflow.SAT_SYM and fmt.signed:
        lo = -hi
    return xp.clip(n, lo, hi)


def quantize_to_grid(x, fmt: Format, rounding=Rounding.HALF_EVEN, overflow=Overflow.SAT, u=None):
    """Float x to the integer-valued float64 q of ``fmt`` (numpy or torch in, same out).

    Exact for finite x whose scaled value x * 2**frac_bits is zero or a normal float64 (a
    nonzero x scaled below the normal range is refused), in formats of at most
    `FLOAT_EXACT_BITS` (wider bounded formats are refused).
    """
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    check_float_exact(fmt)
    xp = array_namespace(x)
    y = x.double() if xp is not np else np.asarray(x, dtype=np.float64)
    u = check_random_words(u, y.shape, rounding)
    y = scale_exactly(y, fmt.frac_bits)
    if u is not None and (xp is np or y.device.type == "cpu") and np.asarray(u).dtype == np.uint32:
        rounded = _stochastic_on_cpu(y, np.ascontiguousarray(u), xp)  # one fused pass
    else:
        rounded = round_to_integer(y, rounding, None if u is None else _words_as_float(u, y, xp))
    return fit_overflow_float(rounded, fmt, overflow)


@njit(cache=True, inline="always")
def round_float_scalar(y, rounding, u):
    """`round_to_integer` of one float64 (``u``: its uint32 word, read only by STOCHASTIC)."""
    if rounding == _HALF_EVEN:
        return np.rint(y)
    floor = np.floor(y)
    frac = y - floor
    if rounding == _FLOOR:
        return floor
    if rounding == _HALF_UP:
        return floor + (frac >= 0.5)
    if rounding == _HALF_AWAY:
        return floor + ((frac > 0.5) | ((frac == 0.5) & (y > 0)))
    if rounding == _TOWARD_ZERO:
        return floor + ((frac > 0) & (y < 0))
    magnitude = abs(y)
    m_floor = np.floor(magnitude)
    m_frac = magnitude - m_floor
    threshold = u * _WORD_SCALE
    half = m_floor * 0.5
    up = (m_frac > threshold) | ((m_frac == threshold) & (m_frac > 0) & (np.floor(half) != half))
    rounded = m_floor + up
    return -rounded if y < 0 else (rounded if y > 0 else y)


@njit(cache=True, inline="always")
def fit_float_scalar(n, lo, hi, wrap, modulus):
    """`fit_overflow_float` of one integer-valued float64: into [lo, hi] by wrapping modulo
    ``modulus`` (a power of two) or by clamping (lo = -inf, hi = inf: unbounded). The wrap is
    fit_overflow_float's: r = fmod(n, modulus), here n - modulus * trunc(n / modulus) (the
    scaling, trunc and the product are exact, and the difference is fmod's representable
    remainder, so it is exact too), then the corrections by one modulus (exact by Sterbenz).
    fmod itself, a libm loop, would be evaluated for every element of a vectorized loop even
    when nothing wraps."""
    if wrap:
        r = n - modulus * np.trunc(n / modulus)
        if r > hi:
            r -= modulus
        if r < lo:
            r += modulus
        return r
    return min(max(n, lo), hi)


@njit(cache=True, inline="always")
def scaled_float(v, scale, check_tiny):
    """(v * scale, whether the float path cannot take it as it is): `scale_exactly`'s rule for
    one float64 value, with the product not finite counted too; ``check_tiny`` for a scale
    below 1 (only scaling down can leave the normal range, where the product may round)."""
    y = v * scale
    return y, (not np.isfinite(y)) | (check_tiny & (abs(y) < SMALLEST_NORMAL) & (v != 0))


@njit(cache=True, parallel=True)
def _fake_quantize_flat(x, in_scale, check_tiny, rounding, u, lo, hi, wrap, modulus, clip_lo,
                        clip_hi, out_scale, out):
    """out = clamp(fit(round(x * in_scale)), clip_lo, clip_hi) * out_scale, in out's dtype, in
    one pass. Returns how
    many elements this pass cannot decide (a scaled value not finite, or, with ``check_tiny``,
    nonzero below float64's normal range), for the caller to hand to the general path."""
    undecided = 0
    has_u = u.size > 0
    for i in prange(x.size):
        y, refused = scaled_float(np.float64(x[i]), in_scale, check_tiny)
        undecided += refused
        n = round_float_scalar(y, rounding, u[i] if has_u else np.uint32(0))
        out[i] = min(max(fit_float_scalar(n, lo, hi, wrap, modulus), clip_lo), clip_hi) * out_scale
    return undecided


def _one_pass(flat, fmt: Format, rounding: Rounding, overflow: Overflow, words, out,
              out_frac: int, clip: tuple[int, int] | None = None) -> bool:
    """`_fake_quantize_flat` of the flat float array ``flat`` into ``out`` (whose dtype is the
    result's) with fmt's rails; True when it decided every element. ``words``: uint32 per
    element, or None."""
    lo, hi, wrap, modulus = -math.inf, math.inf, False, 1.0
    if fmt.bounded:
        lo, hi = float(fmt.min_int), float(fmt.max_int)
        if overflow == Overflow.SAT_SYM and fmt.signed:
            lo = -hi
        wrap, modulus = overflow == Overflow.WRAP, float(1 << fmt.bits)
    clip_lo, clip_hi = (-math.inf, math.inf) if clip is None else map(float, clip)
    words = np.zeros(0, np.uint32) if words is None else np.ascontiguousarray(words).reshape(-1)
    return not _fake_quantize_flat(flat, 2.0 ** fmt.frac_bits, fmt.frac_bits < 0, int(rounding),
                                   words, lo, hi, wrap, modulus, clip_lo, clip_hi,
                                   2.0 ** -out_frac, out)


def fake_quantize(x, fmt: Format, rounding=Rounding.HALF_EVEN, overflow=Overflow.SAT, u=None,
                  out_frac: int | None = None, clip: tuple[int, int] | None = None):
    """The fake-quantized values n * 2**-out_frac in x's dtype (numpy or torch in, same out),
    where n = `quantize_to_grid`(x, fmt, rounding, overflow, u), then clamped to ``clip``;
    ``out_frac`` defaults to fmt's. A float32 result is n * 2**-out_frac rounded to float32.
    On the CPU one fused pass (`_fake_quantize_flat`) computes it; whatever that pass cannot
    decide (values beyond float64 or scaled below its normal range) goes the general way,
    which gives the same values or raises the same error."""
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    out_frac = fmt.frac_bits if out_frac is None else out_frac
    xp = array_namespace(x)
    fused = (x.dtype in (np.float32, np.float64) if xp is np
             else x.device.type == "cpu" and x.dtype in (xp.float32, xp.float64))
    words = check_random_words(u, tuple(x.shape), rounding)
    if fused and (words is None or np.asarray(words).dtype == np.uint32):
        check_float_exact(fmt)
        flat = np.ascontiguousarray(x if xp is np else x.detach().contiguous().numpy()).reshape(-1)
        out = np.empty_like(flat)
        if _one_pass(flat, fmt, rounding, overflow, words, out, out_frac, clip):
            out = out.reshape(tuple(x.shape))
            return out if xp is np else xp.from_numpy(out)
    n = quantize_to_grid(x, fmt, rounding, overflow, u)
    if clip is not None:
        n = xp.clip(n, *clip)
    n = n * 2.0 ** -out_frac
    return n.astype(x.dtype) if xp is np else n.to(x.dtype)


def _stochastic_on_cpu(y, u: np.ndarray, xp):
    """Stochastic rounding of the float64 array y (numpy, or a CPU torch tensor: the same
    memory) with uint32 words u, by the fused kernel."""
    flat = np.ascontiguousarray(y if xp is np else y.contiguous().numpy()).reshape(-1)
    out = np.empty_like(flat)  # round_to_integer's STOCHASTIC rule, in one pass
    _fake_quantize_flat(flat, 1.0, False, _STOCHASTIC, u.reshape(-1), -math.inf, math.inf, False,
                        1.0, -math.inf, math.inf, 1.0, out)
    out = out.reshape(y.shape)
    return out if xp is np else xp.from_numpy(out)


def _words_as_float(u, like, xp):
    if xp is np:
        return np.asarray(u).astype(np.float64)
    import torch
    if isinstance(u, np.ndarray):
        u = torch.from_numpy(u.astype(np.float64))
    return u.to(device=like.device, dtype=torch.float64)


# From this magnitude on, a float64 is an integer multiple of 2**63: 0 modulo any width.
_WRAPS_TO_ZERO = 2.0 ** (MAX_BITS + 53)


def quantize(x, fmt: Format, rounding=Rounding.HALF_EVEN, overflow=Overflow.SAT, u=None) -> np.ndarray:
    """Float x (array-like) to int64 q in ``fmt``; NaN/Inf are refused.

    Rounds in float64 (exact, `round_to_integer`), then fits the integer: exact for every
    format, the widest included. A scaled value far beyond int64 (or float64's range, once
    scaled) still saturates to the right rail and wraps to the right residue.
    """
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    u = check_random_words(u, x.shape, rounding)
    if fmt.bounded and fmt.bits <= FLOAT_EXACT_BITS[fmt.signed] and (u is None or u.dtype == np.uint32):
        # one pass (`_fake_quantize_flat` into int64): the float path's rounding and fit equal
        # this function's in these formats, and the fitted value, an integer of at most 54
        # bits, converts to int64 exactly; what the pass cannot decide goes the general way
        out = np.empty(x.size, np.int64)
        if _one_pass(np.ascontiguousarray(x).reshape(-1), fmt, rounding, overflow, u, out, 0):
            return out.reshape(x.shape)
    x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize NaN or Inf; check the tensor for overflowed values")
    # clipping at 2**115 keeps every decision below (those values are integers, multiples of
    # 2**63: beyond every rail and 0 modulo every width) and keeps inf out of the rounding
    y = np.clip(scale_exactly(x, fmt.frac_bits), -_WRAPS_TO_ZERO, _WRAPS_TO_ZERO)
    r = round_to_integer(y, rounding, None if u is None else _words_as_float(u, x, np))
    if not fmt.bounded:
        if r.size and not in_domain(r.min(), r.max()):  # exact float comparisons
            raise OverflowError(f"a value needs more than 62 bits in {fmt.describe()}; "
                                f"give the format a width (bits) and an overflow mode")
        return r.astype(np.int64)
    lo, hi = fmt.min_int, fmt.max_int
    if overflow == Overflow.WRAP:  # fmod is exact and leaves |r| < 2**bits; then the low bits
        r = np.fmod(r, float(1 << fmt.bits)).astype(np.int64)
        return ((r - lo) & ((1 << fmt.bits) - 1)) + lo
    if overflow == Overflow.SAT_SYM and fmt.signed:
        lo = -hi
    # every rail lies within +-2**62: clipping there first keeps each decision and fits int64
    limit = float(1 << MAX_BITS)
    return np.clip(np.clip(r, -limit, limit).astype(np.int64), lo, hi)


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
