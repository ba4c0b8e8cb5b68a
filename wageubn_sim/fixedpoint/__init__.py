"""Fixed-point core: formats, rounding and overflow modes, shifts, R(x), random bits.

The contract these implement is `docs/arithmetic.md`; `reference` restates it in Python ints.
"""
from .scalar import fit_overflow, requantize_scalar, shift_left_fitted, shift_right_rounded
from .floats import quantize, quantize_to_grid, round_to_integer
from .arrays import requantize
from .format import MAX_BITS, FixedArray, Format
from .modes import MODE_NAMES, Overflow, Rounding
from .random_bits import BitSource, random_u32, random_u32_reference
from .scale import scale_exponent_of_floats, scale_exponent_of_ints

__all__ = [
    "BitSource", "FixedArray", "Format", "MAX_BITS", "MODE_NAMES", "Overflow", "Rounding",
    "fit_overflow", "quantize", "quantize_to_grid", "random_u32", "random_u32_reference",
    "requantize", "requantize_scalar", "round_to_integer", "scale_exponent_of_floats",
    "scale_exponent_of_ints", "shift_left_fitted", "shift_right_rounded",
]
