"""Register loops for compiled steps: values moved into a register in place, one after
another, with the register's event counts. The execution plan runs them over one image at a
time inside its compiled call (a parallel pass per tensor, as `arrays.requantize_counted`
makes, would not fit there); their arithmetic is the scalar primitives' (`scalar`) and the
float path's (`floats`), the same that every other register runs."""
from __future__ import annotations

import numpy as np
from numba import njit

from .floats import round_float_scalar
from .format import MAX_BITS
from .modes import ROUND_FLOOR, ROUND_HALF_AWAY, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_TOWARD_ZERO
from .scalar import OVERFLOWED, TIE, format_range, low_mask, requantize_right_tie, requantize_scalar_flagged


@njit(cache=True, inline="always")
def requantize_floats_in_place(values, shift, lo, hi, rounding):
    """values (exact float integers, in place) shifted right by ``shift``, rounded and clamped
    to [lo, hi] by the float path's rules (`floats.round_float_scalar`, docs §4), exact here:
    v * 2**-shift is exact (a power of two, and |v| >= 1 keeps it normal), so are its rounding,
    its fractional part (a tie is one half exactly) and the clamp to the rails. Returns the
    (ties, overflowed, underflows) counts."""
    scale = 2.0 ** -shift
    ties, overflowed, underflows = 0, 0, 0
    for i in range(values.shape[0]):
        v = np.float64(values[i])
        y = v * scale
        rounded = round_float_scalar(y, rounding, np.uint32(0))
        r = min(max(rounded, lo), hi)
        values[i] = r
        over = r != rounded
        ties += (y - np.floor(y)) == 0.5
        overflowed += over
        underflows += (r == 0) & (v != 0) & (not over)
    return ties, overflowed, underflows


@njit(cache=True, inline="always")
def requantize_in_place(values, shift, bits, signed, rounding, overflow, exact_floats):
    """values moved into a register in place, one after another: the loop a compiled step
    runs over one image (`execution.plan`); returns the (ties, overflowed, underflows) counts.
    ``bits`` 0: unbounded; ``rounding`` deterministic; every value in the domain and, for a left
    shift of an unbounded format, staying in it (the plan's static ranges prove both).
    ``exact_floats``: values are float integers, shift > 0 and no wrap: rounded by the float
    path's rules (`requantize_floats_in_place`), exact on them; else on int64 through the
    same scalar primitives as `requantize` (`scalar.requantize_right_tie`, its branch-free
    common case, else `requantize_scalar_flagged`)."""
    if exact_floats:
        lo, hi = -np.inf, np.inf
        if bits:
            rail_lo, rail_hi = format_range(bits, signed, overflow)
            lo, hi = np.float64(rail_lo), np.float64(rail_hi)
        # one loop per rounding mode, the mode a constant in each, so that its test leaves the
        # loop and the loop vectorizes (a 4x difference)
        if rounding == ROUND_HALF_EVEN:
            return requantize_floats_in_place(values, shift, lo, hi, ROUND_HALF_EVEN)
        if rounding == ROUND_HALF_UP:
            return requantize_floats_in_place(values, shift, lo, hi, ROUND_HALF_UP)
        if rounding == ROUND_HALF_AWAY:
            return requantize_floats_in_place(values, shift, lo, hi, ROUND_HALF_AWAY)
        if rounding == ROUND_FLOOR:
            return requantize_floats_in_place(values, shift, lo, hi, ROUND_FLOOR)
        return requantize_floats_in_place(values, shift, lo, hi, ROUND_TOWARD_ZERO)
    ties, overflowed, underflows = 0, 0, 0
    if 0 < shift <= MAX_BITS:  # the common case, branch-free
        mask, half = low_mask(shift), np.int64(1) << (shift - 1)
        for i in range(values.shape[0]):
            v = np.int64(values[i])
            r, tie, over = requantize_right_tie(v, shift, mask, half, bits, signed, rounding, overflow)
            values[i] = r
            ties += tie
            overflowed += over
            underflows += (r == 0) & (v != 0) & (not over)
    else:
        for i in range(values.shape[0]):
            v = np.int64(values[i])
            r, flag = requantize_scalar_flagged(v, shift, bits, signed, rounding, overflow, np.int64(0))
            values[i] = r
            over = (flag & OVERFLOWED) != 0
            ties += (flag & TIE) != 0
            overflowed += over
            underflows += (r == 0) & (v != 0) & (not over)
    return ties, overflowed, underflows


