"""Registers on integer arrays: the scalar primitives (`scalar`) applied to every element in one
parallel pass, with the flags and event counts the engine reports, and the domain checks every
array that enters the engine passes (`exact_int64`, `check_domain`)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .format import MAX_BITS, Format, bits_needed
from .modes import ROUND_STOCHASTIC, Overflow, Rounding
from .random_bits import U_BITS
from .scalar import (DOMAIN_LIMIT, OVERFLOWED, TIE, fit_overflow, left_shift_overflows, low_mask,
                     requantize_right_tie, requantize_scalar_flagged, shift_right_stochastic_tie)


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
    stochastic = rounding == ROUND_STOCHASTIC
    if 0 < shift <= MAX_BITS and (not stochastic or (shift <= U_BITS and has_u)):
        # the common cases (G's stochastic one too), branch-free: the loop vectorizes
        mask, half = low_mask(shift), np.int64(1) << (shift - 1)
        for i in prange(q.size):
            v = q[i]
            outside += (v >= DOMAIN_LIMIT) | (v < -DOMAIN_LIMIT)
            if stochastic:
                rounded, tie = shift_right_stochastic_tie(v, shift, mask, half, u[i])
                r = fit_overflow(rounded, bits, signed, overflow)
                over = r != rounded
            else:
                r, tie, over = requantize_right_tie(v, shift, mask, half, bits, signed, rounding, overflow)
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



def needed_bits(q: np.ndarray) -> int:
    """The narrowest two's complement width holding every value of q (at least 2)."""
    return bits_needed(*value_range(q)) if q.size else 2


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
