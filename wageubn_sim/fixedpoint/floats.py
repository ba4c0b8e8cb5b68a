"""Float primitives, written once over the array namespace ``xp`` (numpy or torch): rounding
integer-valued floats, fitting them, quantizing floats onto a grid (`quantize`, `fake_quantize`).
The torch path runs these on float64 tensors, so its fake-quant values equal the integer core's
q * 2**-f; each is exact in the formats `FLOAT_EXACT_BITS` admits (docs/arithmetic.md
section 8)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .arrays import check_random_words, in_domain
from .format import MAX_BITS, Format
from .modes import (ROUND_FLOOR, ROUND_HALF_AWAY, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_STOCHASTIC,
                    ROUND_TOWARD_ZERO, Overflow, Rounding)
from .random_bits import U_BITS

_WORD_SCALE = 2.0 ** -U_BITS  # a random word u is the fraction u * 2**-32


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
    if rounding == ROUND_HALF_EVEN:
        return np.rint(y)
    floor = np.floor(y)
    frac = y - floor
    if rounding == ROUND_FLOOR:
        return floor
    if rounding == ROUND_HALF_UP:
        return floor + (frac >= 0.5)
    if rounding == ROUND_HALF_AWAY:
        return floor + ((frac > 0.5) | ((frac == 0.5) & (y > 0)))
    if rounding == ROUND_TOWARD_ZERO:
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



@njit(cache=True, inline="always")
def quantize_float_scalar(v, in_scale, check_tiny, rounding, u, lo, hi, wrap, modulus):
    """One float onto its grid: fit(round(v * in_scale)) as an integer-valued float64, and
    whether the float path cannot take v as it is (`scaled_float`). Every fused pass over
    floats computes its elements through this: `fake_quantize`'s, `quantize`'s and the
    execution plan's input quantization."""
    y, refused = scaled_float(np.float64(v), in_scale, check_tiny)
    return fit_float_scalar(round_float_scalar(y, rounding, u), lo, hi, wrap, modulus), refused


@njit(cache=True, parallel=True)
def _fake_quantize_flat(x, in_scale, check_tiny, rounding, u, lo, hi, wrap, modulus, clip_lo,
                        clip_hi, out_scale, out):
    """out = clamp(fit(round(x * in_scale)), clip_lo, clip_hi) * out_scale, in out's dtype, in
    one pass. Returns how many elements this pass cannot decide (a scaled value not finite,
    or, with ``check_tiny``, nonzero below float64's normal range), for the caller to hand to
    the general path."""
    undecided = 0
    has_u = u.size > 0
    for i in prange(x.size):
        n, refused = quantize_float_scalar(x[i], in_scale, check_tiny, rounding,
                                           u[i] if has_u else np.uint32(0), lo, hi, wrap, modulus)
        undecided += refused
        out[i] = min(max(n, clip_lo), clip_hi) * out_scale
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
    _fake_quantize_flat(flat, 1.0, False, ROUND_STOCHASTIC, u.reshape(-1), -math.inf, math.inf, False,
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


def quantize_events(x, fmt: Format, rounding=Rounding.HALF_EVEN) -> tuple:
    """What `quantize` of float x in ``fmt`` meets, measured before its fit: (the rounded
    integers, clipped to the 62-bit domain, so an out-of-range input shows its own range; and
    counts as `arrays.requantize_counted` gives them: ties, overflowed (values the fit must
    saturate or wrap), underflows (nonzero values rounded to zero)). Deterministic roundings
    only. Exact: the scaling by 2**f, ``y - floor(y)`` and the comparisons with the rails (a
    power of two each, ``max_int + 1`` for the upper) are exact in float64."""
    rounding = Rounding.parse(rounding)
    if rounding == Rounding.STOCHASTIC:
        raise ValueError("quantize_events counts deterministic roundings; give the random words "
                         "to quantize itself")
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize NaN or Inf; check the tensor for overflowed values")
    y = np.clip(scale_exactly(x, fmt.frac_bits), -_WRAPS_TO_ZERO, _WRAPS_TO_ZERO)
    r = round_to_integer(y, rounding)
    ties = int(np.count_nonzero(y - np.floor(y) == 0.5))
    overflowed = int(np.count_nonzero((r < float(fmt.min_int)) | (r >= float(fmt.max_int + 1)))) \
        if fmt.bounded else 0
    underflows = int(np.count_nonzero((r == 0) & (y != 0)))  # zero lies in every format
    limit = 1 << (MAX_BITS - 1)  # the domain's edge, a power of two: clipping at it is exact
    rounded = np.minimum(np.clip(r, -float(limit), float(limit)).astype(np.int64), limit - 1)
    return rounded, {"ties": ties, "overflowed": overflowed, "underflows": underflows}
