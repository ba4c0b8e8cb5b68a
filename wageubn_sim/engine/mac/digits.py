"""Base-256 digits: how operands wider than int8 become int8 GEMMs (the digit rule is the
comment below), and the digit of a value at an origin."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


INT32_EXACT = 1 << 31



# Operands wider than int8 are cut into base-256 digits, each stored as an int8, so each digit
# pair is one int8 GEMM; x (D_x digits) times w (D_w) costs D_x * D_w GEMMs. Digits are taken
# of v - origin (non-negative for every v in range), each minus 128:
#     v = origin + 128 * R_D + sum_d s_d * 256**d,   R_D = sum_{d<D} 256**d,  s_d in -128..127.
# Weights use origin = -128 * R_D (balanced digits: v = sum_d s_d * 256**d, nothing to add
# back). The unrolled input may take any origin, since the constant c = origin + 128 * R_D it
# leaves adds c * sum_k w[o, k] to output o, added back exactly: an input in 0..255 (a ReLU's
# byte) is one digit.
DIGIT_BITS = 8



MAX_DIGIT_GEMMS = 6  # beyond, BLAS in floats is faster



DIGIT_CHUNK = (INT32_EXACT - 1) // (128 * 128)  # reduction length whose int32 sums are exact



def _repunit(count: int) -> int:
    """R_D = sum_{d<D} 256**d."""
    return ((1 << (DIGIT_BITS * count)) - 1) // 255



def balanced_digits(lo: int, hi: int) -> tuple[int, int]:
    """(D, origin) of the fewest balanced digits that hold every value in [lo, hi]:
    D digits hold -128 * R_D .. 127 * R_D."""
    count = 1
    while lo < -128 * _repunit(count) or hi > 127 * _repunit(count):
        count += 1
    return count, -128 * _repunit(count)



def offset_digits(lo: int, hi: int) -> tuple[int, int]:
    """(D, origin) of the fewest digits for the values in [lo, hi] and 0 (the padding): v - lo
    must be below 256**D. When it stays below half of that, the origin is lowered so that the
    top digit is (v - lo) >> 8(D - 1), zero for the values near lo (when it is mostly zero,
    `_int8_parts` adds its products entry by entry instead of by a GEMM)."""
    lo, hi = min(lo, 0), max(hi, 0)
    count = 1
    while hi - lo >= 1 << (DIGIT_BITS * count):
        count += 1
    top = 1 << (DIGIT_BITS * (count - 1))
    return count, (lo - 128 * top if hi - lo < 128 * top else lo)



def digit_offset(count: int, origin: int) -> int:
    """The constant c = origin + 128 * R_D that ``count`` digits from ``origin`` leave out."""
    return origin + 128 * _repunit(count)



@njit(cache=True, inline="always")
def digit(v, d, origin):
    """Digit d of v from ``origin``, as stored: byte d of v - origin, minus 128."""
    return np.int8((((v - origin) >> (DIGIT_BITS * d)) & 255) - 128)



def digit_of_zero(d: int, origin: int) -> int:
    """Digit d of 0 (what padding holds)."""
    return (((-origin) >> (DIGIT_BITS * d)) & 255) - 128



@njit(cache=True, parallel=True)
def _split_digits(flat, origin, out):
    for i in prange(flat.size):
        for d in range(out.shape[0]):
            out[d, i] = digit(np.int64(flat[i]), d, origin)



def split_digits(a: np.ndarray, count: int, origin: int) -> np.ndarray:
    """Integers a as (count, *a.shape) int8 digits from ``origin``:
    a = origin + 128 * R_D + sum_d out[d] * 256**d."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty((count, flat.size), np.int8)
    _split_digits(flat, origin, out)
    return out.reshape((count,) + a.shape)
