"""Rescale: a float chain approximated by a fixed-point multiplier per channel, as NPUs and
TFLite requantize (docs/arithmetic.md section 12). Two modes:

* ``single``: y = fit(round((x * M_c + O_c) * 2**-s_c)), one rounding by the declared mode,
  then the output register's overflow; the offset O_c (a bias) on the product's grid;
* ``double``: TFLite's MultiplyByQuantizedMultiplier, y = fit(RDBP(SRDHM(x * 2**l_c, M_c), r_c)
  + O_c) with l_c = max(-s_c, 0), r_c = max(s_c, 0), M_c a Q31 int32, x an int32 accumulator;
  SRDHM rounds to nearest with ties toward +infinity, RDBP half away from zero (gemmlowp's
  primitives, `fixedpoint.scalar`), the offset O_c a zero point on the output grid.

Not bit-exact to a float chain in general: an import that chooses it says so and records it.

A clamp after the register (``low``, ``high``: a ReLU or Clip inside the chain, as levels) ends
either mode.

Overflow bound: single: |x * M + O| < 2**61 is checked per run against the domain; double: x
and x * 2**l must be int32, as TFLite requires (checked), and SRDHM's product fits int64.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import magnitude_max, value_range
from ...fixedpoint.format import Format
from ...fixedpoint.modes import Overflow, Rounding
from ...fixedpoint.reference import (multiply_by_quantized_multiplier, overflow_int,
                                     round_fraction)
from ...fixedpoint.scalar import (DOMAIN_LIMIT, INT32_MAX, INT32_MIN, OVERFLOWED, TIE, fit_overflow,
                                  requantize_scalar_flagged, rounding_divide_by_pot,
                                  saturating_rounding_doubling_high_mul)
from ..registers import Events, Output, check_channel_input
from ..spec import OpSpec

MODES = ("single", "double")
SHIFT_FORMAT = Format(8, 0)


@dataclasses.dataclass(frozen=True)
class RescaleParams:
    """``out_fmt`` (bounded), ``rounding`` and ``overflow``: the output register (``double``
    rounds by its own definition, its last rounding half away from zero: it takes HALF_AWAY); ``multiplier_bits``: the
    width of M (``double``: 32, a Q31); ``input_frac``: the input's grid the multipliers were
    made for; ``mode``: ``single`` or ``double``."""

    out_fmt: Format
    multiplier_bits: int
    input_frac: int
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT
    mode: str = "single"
    low: int | None = None  # a clamp after the register (a ReLU or Clip in the chain): its lowest level
    high: int | None = None  # and its highest (None: the format's rails)

    def __post_init__(self):
        if not isinstance(self.out_fmt, Format) or not self.out_fmt.bounded:
            raise ValueError(f"rescale: out_fmt {self.out_fmt!r} must be a bounded format")
        if self.mode not in MODES:
            raise ValueError(f"rescale: mode={self.mode!r}; choose one of {MODES}")
        if isinstance(self.multiplier_bits, bool) or not isinstance(self.multiplier_bits, int) or \
                not 2 <= self.multiplier_bits <= 32:
            raise ValueError(f"rescale: multiplier_bits={self.multiplier_bits!r}: choose 2..32")
        if self.mode == "double" and (self.multiplier_bits != 32 or self.rounding != Rounding.HALF_AWAY):
            raise ValueError("rescale: the double mode (TFLite's) takes a 32-bit Q31 multiplier and "
                             "rounds HALF_AWAY")
        if Rounding(self.rounding) == Rounding.STOCHASTIC:
            raise ValueError("rescale: a deterministic rounding")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                      not self.out_fmt.min_int <= value <= self.out_fmt.max_int):
                raise ValueError(f"rescale: {name}={value!r} must be an int of out_fmt {self.out_fmt.describe()}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"rescale: low={self.low} above high={self.high}")

    @property
    def levels(self) -> tuple:
        """(lowest, highest) output: the clamp's, within the format's rails."""
        fmt = self.out_fmt
        return (fmt.min_int if self.low is None else self.low, fmt.max_int if self.high is None else self.high)


@njit(cache=True, parallel=True)
def _single(x, mult, offset, shift, bits, signed, rounding, overflow, low, high, out, flags):
    n, c, pixels = x.shape
    per_channel = mult.shape[0] > 1
    for job in prange(n * c):
        b, ch = job // c, job % c
        k = ch if per_channel else 0
        for i in range(pixels):
            v = x[b, ch, i] * mult[k] + offset[k]
            r, flags[b, ch, i] = requantize_scalar_flagged(v, shift[k], bits, signed, rounding,
                                                           overflow, np.int64(0))
            out[b, ch, i] = min(max(r, low), high)


@njit(cache=True, parallel=True)
def _double(x, mult, offset, shift, bits, signed, overflow, low, high, out, flags):
    n, c, pixels = x.shape
    per_channel = mult.shape[0] > 1
    for job in prange(n * c):
        b, ch = job // c, job % c
        k = ch if per_channel else 0
        left, right = max(-shift[k], 0), max(shift[k], 0)
        for i in range(pixels):
            upper = saturating_rounding_doubling_high_mul(x[b, ch, i] << left, mult[k])
            v = rounding_divide_by_pot(upper, right) + offset[k]
            r = fit_overflow(v, bits, signed, overflow)
            out[b, ch, i] = min(max(r, low), high)
            flags[b, ch, i] = OVERFLOWED if r != v else 0


def rescale(x: np.ndarray, x_frac: int, multiplier: np.ndarray, offset: np.ndarray, shift: np.ndarray,
            p: RescaleParams, trace: bool = False) -> Output:
    check_channel_input("rescale", x, x_frac, p.input_frac, "multipliers")
    channels = multiplier.shape[0]
    if channels not in (1, x.shape[1]) or offset.shape != (channels,) or shift.shape != (channels,):
        raise ValueError(f"rescale: multiplier {multiplier.shape}, offset {offset.shape} and shift "
                         f"{shift.shape} for an input of {x.shape[1]} channels")
    lo, hi = value_range(x)
    if p.mode == "single":
        if shift.size and (int(shift.min()) < 0 or int(shift.max()) > 62):
            raise ValueError("rescale: a single-rounding shift is a right shift of 0..62")
        bound = max(-lo, hi) * magnitude_max(multiplier) + magnitude_max(offset)
        if bound >= DOMAIN_LIMIT:
            raise OverflowError("rescale: x * M + O may leave the 62-bit domain; use fewer "
                                "multiplier bits or a narrower input")
    else:
        left = max(-int(shift.min()), 0) if shift.size else 0
        if (shift.size and (int(shift.min()) < -31 or int(shift.max()) > 31)) or \
                (multiplier.size and (int(multiplier.min()) < 0 or int(multiplier.max()) > INT32_MAX)):
            raise ValueError("rescale: TFLite's multiplier is a Q31 in 0..2**31-1, its exponent -31..31")
        if lo < INT32_MIN or hi > INT32_MAX or (lo << left) < INT32_MIN or (hi << left) > INT32_MAX:
            raise OverflowError("rescale: TFLite's double rounding multiplies an int32 accumulator "
                                "(shifted left, still int32); this one leaves it")
    n, c = x.shape[:2]
    x3 = np.ascontiguousarray(x, dtype=np.int64).reshape(n, c, int(np.prod(x.shape[2:])))
    out, flags = np.empty(x3.shape, np.int64), np.empty(x3.shape, np.uint8)
    fmt = p.out_fmt
    args = (x3, np.ascontiguousarray(multiplier, np.int64), np.ascontiguousarray(offset, np.int64),
            np.ascontiguousarray(shift, np.int64), fmt.bits, fmt.signed)
    low, high = p.levels
    if p.mode == "single":
        _single(*args, int(p.rounding), int(p.overflow), low, high, out, flags)
    else:
        _double(*args, int(p.overflow), low, high, out, flags)
    q, flags = out.reshape(x.shape), flags.reshape(x.shape)
    overflowed = int(np.count_nonzero(flags & OVERFLOWED))
    wraps = overflowed if p.overflow == Overflow.WRAP else 0
    events = Events(wraps=wraps, saturations=overflowed - wraps, ties=int(np.count_nonzero(flags & TIE)))
    return Output(q, fmt, events, {"input": x, "output": q} if trace else {}, flags)


def rescale_reference(v: int, multiplier: int, offset: int, shift: int, p: RescaleParams) -> int:
    """One value through the rescale, in Python integers (the contract's statement)."""
    if p.mode == "single":
        y = round_fraction(Fraction(v * multiplier + offset, 1 << shift), p.rounding)
    else:
        y = multiply_by_quantized_multiplier(v, multiplier, shift) + offset
    low, high = p.levels
    return min(max(overflow_int(y, p.out_fmt, p.overflow), low), high)


def rescale_range(p: RescaleParams, arrays, ins):
    """Monotone per channel in x (for either sign of M): its values at the range's two ends."""
    (lo, hi), _ = ins[0]
    if Overflow(p.overflow) == Overflow.WRAP:  # a wrap is not monotone: the rails
        return (*p.levels, p.out_fmt.frac_bits)
    ends = [rescale_reference(v, int(m), int(o), int(s), p)
            for m, o, s in zip(arrays["multiplier"], arrays["offset"], arrays["shift"]) for v in (lo, hi)]
    return min(ends), max(ends), p.out_fmt.frac_bits


def _arrays(p: RescaleParams) -> dict:
    offset_frac = p.input_frac if p.mode == "single" else p.out_fmt.frac_bits
    return {"multiplier": Format(p.multiplier_bits, 0), "offset": Format(None, offset_frac),
            "shift": SHIFT_FORMAT}


SPECS = (OpSpec("rescale", RescaleParams,
                lambda p, a, ins, t: rescale(*ins[0], a["multiplier"], a["offset"], a["shift"], p, t),
                rescale_range, arrays=_arrays, array_ranks={"multiplier": 1, "offset": 1, "shift": 1}),)
