"""The fixed-point core: rounding shifts and overflow on int64, and float-to-grid quantization.

Two families, one contract (`docs/arithmetic.md`, reference in `reference.py`):

* integer primitives (Numba, scalar functions usable from other kernels, plus array
  wrappers): ``shift_right_rounded``, ``fit_overflow``, ``requantize``;
* float primitives written once over the array namespace ``xp`` (numpy or torch):
  ``round_to_integer``, ``fit_overflow_float``, ``quantize_to_grid``. The torch path runs
  these on float64 tensors, so its fake-quant values equal the integer core's q * 2**-f.

Domain: every integer is |q| < 2**61 (`format.MAX_BITS` = 62), so a magnitude, a sum of two
values and the ``half`` constant all stay inside int64.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .format import MAX_BITS, Format
from .modes import Overflow, Rounding
from .random_bits import U_BITS

DOMAIN_LIMIT = 1 << (MAX_BITS - 1)  # |q| < 2**61

_HALF_EVEN = int(Rounding.HALF_EVEN)
_HALF_UP = int(Rounding.HALF_UP)
_HALF_AWAY = int(Rounding.HALF_AWAY)
_FLOOR = int(Rounding.FLOOR)
_TOWARD_ZERO = int(Rounding.TOWARD_ZERO)
_STOCHASTIC = int(Rounding.STOCHASTIC)
_WRAP = int(Overflow.WRAP)
_SAT_SYM = int(Overflow.SAT_SYM)
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
    if rounding == _STOCHASTIC:
        magnitude = -q if q < 0 else q
        result = shift_right_floor(magnitude, shift)
        remainder = magnitude & low_mask(shift)
        if remainder != 0:
            cmp = stochastic_round_up(remainder, shift, u)
            if cmp == 1 or (cmp == -1 and (result & 1) == 1):
                result += 1
        return -result if q < 0 else result
    if shift >= MAX_BITS:
        # |q| < 2**61 <= 2**(shift-1) / 2: the quotient lies in (-1/4, 1/4).
        if rounding == _FLOOR and q < 0:
            return np.int64(-1)
        return np.int64(0)
    floor = q >> shift
    remainder = q & low_mask(shift)  # q - floor * 2**shift, in [0, 2**shift)
    if remainder == 0:
        return floor
    half = np.int64(1) << (shift - 1)
    if rounding == _HALF_EVEN:
        up = remainder > half or (remainder == half and (floor & 1) == 1)
    elif rounding == _HALF_UP:
        up = remainder >= half
    elif rounding == _HALF_AWAY:
        up = remainder > half or (remainder == half and q > 0)
    elif rounding == _TOWARD_ZERO:
        up = q < 0
    else:  # FLOOR
        up = False
    return floor + 1 if up else floor


@njit(cache=True)
def fit_overflow(n, bits, signed, overflow):
    """Fit n into ``bits`` bits (``bits == 0``: unbounded, n unchanged)."""
    if bits == 0:
        return n
    if signed:
        hi = (np.int64(1) << (bits - 1)) - 1
        lo = -hi - 1
    else:
        hi = (np.int64(1) << bits) - 1
        lo = np.int64(0)
    if overflow == _WRAP:
        # n & mask is n mod 2**bits for any int64 n (two's complement), even one that
        # itself wrapped mod 2**64, because 2**bits divides 2**64.
        wrapped = n & low_mask(bits)
        if signed and wrapped > hi:
            wrapped -= np.int64(1) << bits
        return wrapped
    if overflow == _SAT_SYM and signed:
        lo = -hi
    if n > hi:
        return hi
    if n < lo:
        return lo
    return n


@njit(cache=True)
def shift_left_fitted(q, shift, bits, signed, overflow):
    """q * 2**shift (shift >= 0) fitted into ``bits``: saturation is decided before the
    shift, so a product beyond int64 still saturates correctly."""
    if q == 0 or shift == 0:
        return fit_overflow(q, bits, signed, overflow)
    if overflow == _WRAP or bits == 0:
        if bits == 0 and (shift >= MAX_BITS - 1 or
                          (q if q > 0 else -q) >= (np.int64(1) << (MAX_BITS - 1 - shift))):
            raise OverflowError("left shift leaves the 62-bit domain of an unbounded format")
        shifted = q << shift if shift < 64 else np.int64(0)
        return fit_overflow(shifted, bits, signed, overflow)
    hi = fit_overflow(_INT64_MAX, bits, signed, 1)
    lo = fit_overflow(-_INT64_MAX, bits, signed, overflow)
    if shift >= MAX_BITS:
        return hi if q > 0 else lo
    if q > (hi >> shift):
        return hi
    if q < -((-lo) >> shift):  # q * 2**shift < lo  <=>  q < ceil(lo / 2**shift)
        return lo
    return q << shift


@njit(cache=True)
def requantize_scalar(q, shift, bits, signed, rounding, overflow, u):
    """q * 2**-shift rounded and fitted: moving q from frac_in to frac_out = frac_in - shift."""
    if shift >= 0:
        return fit_overflow(shift_right_rounded(q, shift, rounding, u), bits, signed, overflow)
    return shift_left_fitted(q, -shift, bits, signed, overflow)


@njit(cache=True)
def _requantize_flat(q, shift, bits, signed, rounding, overflow, u):
    out = np.empty_like(q)
    has_u = u.size > 0
    for i in range(q.size):
        ui = u[i] if has_u else np.int64(0)
        out[i] = requantize_scalar(q[i], shift, bits, signed, rounding, overflow, ui)
    return out


def _bits_code(fmt: Format) -> int:
    return 0 if fmt.bits is None else fmt.bits


def check_domain(q: np.ndarray, what: str = "input") -> None:
    if q.size and int(np.abs(q).max()) >= DOMAIN_LIMIT:
        raise OverflowError(f"{what} holds an integer of 62 bits or more; the core supports "
                            f"|q| < 2**61 (formats of at most {MAX_BITS} bits)")


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
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"requantize takes integers, got dtype {q.dtype}; use quantize for floats")
    q = q.astype(np.int64)
    check_domain(q)
    u = check_random_words(u, q.shape, rounding)
    words = np.empty(0, np.int64) if u is None else u.astype(np.int64).ravel()
    flat = _requantize_flat(np.ascontiguousarray(q).ravel(), int(frac_in) - fmt.frac_bits,
                            _bits_code(fmt), fmt.signed, int(rounding), int(overflow), words)
    return flat.reshape(q.shape)


# ---- float primitives, shared by numpy and torch -------------------------------------------

def array_namespace(x):
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return np


def round_to_integer(y, rounding: Rounding, u=None):
    """Round each float64 element of y to an integer-valued float64 (same contract as
    ``shift_right_rounded``). ``y - floor(y)`` is exact in binary floating point, so no
    comparison here is approximate. ``u``: uint32 words as float64, for STOCHASTIC."""
    xp = array_namespace(y)
    floor = xp.floor(y)
    frac = y - floor
    if rounding == Rounding.FLOOR:
        return floor
    if rounding == Rounding.HALF_EVEN:
        up = (frac > 0.5) | ((frac == 0.5) & (xp.fmod(floor, 2) != 0))
    elif rounding == Rounding.HALF_UP:
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
        up = (m_frac > threshold) | ((m_frac == threshold) & (m_frac > 0)
                                     & (xp.fmod(m_floor, 2) != 0))
        return xp.sign(y) * (m_floor + up)
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    return floor + up


def fit_overflow_float(n, fmt: Format, overflow: Overflow):
    """``fit_overflow`` on integer-valued floats (exact: fmod is exact in binary floats)."""
    if not fmt.bounded:
        return n
    xp = array_namespace(n)
    lo, hi = float(fmt.min_int), float(fmt.max_int)
    if overflow == Overflow.WRAP:
        # fmod is exact; each correction below is exact by Sterbenz's lemma, except for an
        # unsigned format over 53 bits, whose wrapped negatives no float64 can hold.
        modulus = float(1 << fmt.bits)
        r = xp.fmod(n, modulus)
        r = xp.where(r > hi, r - modulus, r)
        return xp.where(r < lo, r + modulus, r)
    if overflow == Overflow.SAT_SYM and fmt.signed:
        lo = -hi
    return xp.clip(n, lo, hi)


def quantize_to_grid(x, fmt: Format, rounding=Rounding.HALF_EVEN, overflow=Overflow.SAT, u=None):
    """Float x to the integer-valued float64 q of ``fmt`` (numpy or torch in, same out).

    Exact for finite x whose scaled value x * 2**frac_bits is zero or a normal float64.
    """
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    xp = array_namespace(x)
    y = x.double() if xp is not np else np.asarray(x, dtype=np.float64)
    u = check_random_words(u, y.shape, rounding)
    if u is not None:
        u = _words_as_float(u, y, xp)
    y = y * 2.0 ** fmt.frac_bits  # a power of two: exact
    return fit_overflow_float(round_to_integer(y, rounding, u), fmt, overflow)


def _words_as_float(u, like, xp):
    if xp is np:
        return np.asarray(u).astype(np.float64)
    import torch
    if isinstance(u, np.ndarray):
        u = torch.from_numpy(u.astype(np.float64))
    return u.to(device=like.device, dtype=torch.float64)


def quantize(x, fmt: Format, rounding=Rounding.HALF_EVEN, overflow=Overflow.SAT, u=None) -> np.ndarray:
    """Float x (array-like) to int64 q in ``fmt``; NaN/Inf are refused."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize NaN or Inf; check the tensor for overflowed values")
    grid = quantize_to_grid(x, fmt, rounding, overflow, u)
    if grid.size and np.abs(grid).max() >= DOMAIN_LIMIT:
        raise OverflowError(f"a value needs 62 bits or more in {fmt.describe()}; "
                            f"give the format a width (bits) and an overflow mode")
    return grid.astype(np.int64)
