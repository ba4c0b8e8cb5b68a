"""Static ranges, the arithmetic each op's ``static_range`` rule shares: intervals of exact
Python integers (any size) carried through a register. Every deterministic rounding and every
saturation is monotone, so a register maps an interval's endpoints; a wrap spans its whole
format. `execution.ranges` walks a graph with the ops' rules."""
from __future__ import annotations

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.reference import requantize


def fit_range(lo, hi, frac, fmt: Format | None, rounding, overflow) -> tuple:
    """The range lo..hi (on 2**-frac) after a register: the endpoints requantized (every
    deterministic rounding and saturation is monotone), a wrap spanning its whole format."""
    if fmt is None:
        return lo, hi
    if fmt.bounded and Overflow(overflow) == Overflow.WRAP:
        return fmt.min_int, fmt.max_int
    return (requantize(int(lo), frac, fmt, Rounding(rounding), Overflow(overflow)),
            requantize(int(hi), frac, fmt, Rounding(rounding), Overflow(overflow)))


def input_register_range(rng, frac, fmt, rounding):
    """(range, frac) after the input register of an iostrict layer (SAT_SYM), if it has one."""
    if fmt is None:
        return rng, frac
    return fit_range(*rng, frac, fmt, rounding, Overflow.SAT_SYM), fmt.frac_bits


def same_range(params, arrays, ins):
    """The rule of an op that moves values without changing them (pooling's maximum, a
    flatten, nearest upsampling)."""
    (lo, hi), frac = ins[0]
    return lo, hi, frac
