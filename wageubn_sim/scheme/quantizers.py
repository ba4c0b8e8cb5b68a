"""The WAGEUBN quantizers in integers: W, A, E1, E2, G, G_BN and LR.

Each takes a `FixedArray` (exact integers and their fractional bits) and returns one. The
formulas are the official code's (`wageubn-scheme.md` section A; yang-yk/wageubn
`Quantize.py`), restated on integers; `docs/arithmetic.md` section 5 pins the choices the
official float code leaves open. ``k`` is always the scheme's width: Q(x, k) keeps
``k - 1`` fractional bits.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..fixedpoint.floats import quantize
from ..fixedpoint.arrays import requantize
from ..fixedpoint.scalar import requantize_scalar_vectorizable
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.modes import OVERFLOW_SAT, ROUND_HALF_EVEN, Overflow, Rounding
from ..fixedpoint.scale import scale_exponent_of_ints

HALF_EVEN = Rounding.HALF_EVEN


def _check_k(name: str, k: int, low: int = 2) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < low:
        raise ValueError(f"{name}={k!r}: the scheme's widths are integers >= {low}")


def weight_quantize(w: FixedArray, k: int = 8) -> FixedArray:
    """fw = C(Q(w, k), k): k-1 fractional bits, clipped to +-(2**(k-1) - 1)."""
    _check_k("k", k)
    fmt = Format(bits=k, frac_bits=k - 1)
    return FixedArray(requantize(w.q, w.frac_bits, fmt, HALF_EVEN, Overflow.SAT_SYM), k - 1)


def activation_quantize(a: FixedArray, k: int = 8, bits: int | None = None,
                        overflow=Overflow.SAT) -> FixedArray:
    """fa = Q(a, k): k-1 fractional bits, no clip (``bits`` adds a register width)."""
    _check_k("k", k, low=1)
    fmt = Format(bits=bits, frac_bits=k - 1)
    return FixedArray(requantize(a.q, a.frac_bits, fmt, HALF_EVEN, overflow), k - 1)


def _scaled_frac(e: FixedArray, frac_below_r: int) -> int:
    """Fractional bits of a result on the grid R * 2**-frac_below_r."""
    return frac_below_r - scale_exponent_of_ints(e.q, e.frac_bits)


def e1_quantize(e: FixedArray, k: int = 8) -> FixedArray:
    """fe1 = R * clip(Q(e / R, k), -1, 1): integers in [-2**(k-1), 2**(k-1)] (k+1 bits)."""
    _check_k("k", k)
    frac = _scaled_frac(e, k - 1)
    q = np.ascontiguousarray(e.q, dtype=np.int64)
    out = np.empty(q.shape, np.int64)
    _e1_flat(q.reshape(-1), e.frac_bits - frac, np.int64(1) << (k - 1), out.reshape(-1))
    return FixedArray(out, frac)


@njit(cache=True, parallel=True)
def _e1_flat(q, shift, limit, out):
    """`e1_quantize` element by element: RNE(q * 2**-shift) clipped to +-limit. A left shift
    (shift < 0) stays in the domain: |q| * 2**-shift < 2**k, since |e| < 2R (R is |e|'s
    power-of-two scale)."""
    for i in prange(q.size):
        n = requantize_scalar_vectorizable(q[i], shift, 0, True, ROUND_HALF_EVEN, OVERFLOW_SAT)
        out[i] = min(max(n, -limit), limit)


def e2_quantize(e: FixedArray, k: int = 8) -> FixedArray:
    """fe2, the flag quantization, on the grid R * 2**-(2k-2).

    With t = |e| / R * 2**(2k-2): where t < 2**(k-1) (|e| below one step ds = R/2**(k-1)),
    n = RNE(t) (at most 2**(k-1)); elsewhere n = 2**(k-1) * min(RNE(t / 2**(k-1)), 2**(k-1)-1).
    The sign of e is kept. One pass (`_e2_flat`).
    """
    _check_k("k", k)
    frac = _scaled_frac(e, 2 * (k - 1))
    q = np.ascontiguousarray(e.q, dtype=np.int64)
    out = np.empty(q.shape, np.int64)
    _e2_flat(q.reshape(-1), e.frac_bits - frac, k - 1, out.reshape(-1))
    return FixedArray(out, frac)


@njit(cache=True, parallel=True)
def _e2_flat(q, shift, p, out):
    """`e2_quantize` element by element; t = |q| * 2**-shift, step 2**p. A left shift (shift < 0)
    stays in the domain: t < 2**(2p + 1), since |e| < 2R (R is |e|'s power-of-two scale)."""
    step = np.int64(1) << p
    for i in prange(q.size):
        v = q[i]
        magnitude = -v if v < 0 else v
        if _below_power_of_two(magnitude, shift, p):
            n = min(requantize_scalar_vectorizable(magnitude, shift, 0, True, ROUND_HALF_EVEN, OVERFLOW_SAT), step)
        else:
            coarse = requantize_scalar_vectorizable(magnitude, shift + p, 0, True, ROUND_HALF_EVEN, OVERFLOW_SAT)
            n = min(coarse, step - 1) * step
        out[i] = -n if v < 0 else n


@njit(cache=True, inline="always")
def _below_power_of_two(magnitude, shift, p):
    """magnitude * 2**-shift < 2**p, decided on integers."""
    if shift >= 0:
        # m < 2**(p+shift)  <=>  floor(m / 2**shift) < 2**p
        return (magnitude >> min(shift, 63)) < (np.int64(1) << p)
    exponent = p + shift  # m < 2**exponent
    return magnitude < (np.int64(1) << exponent) if exponent >= 0 else magnitude == 0


def g_quantize(g: FixedArray, u: np.ndarray, k_dr: int = 8, k: int = 15) -> FixedArray:
    """fg, the constant quantization: n = clip(SR(2**(k_dr-1) * g / R), +-(2**(k_dr-1) - 1)),
    G = n * 2**-(k-1). ``u``: one uint32 random word per element (`random_bits`).

    The official code calls this with g_scale = LR = 2**(k_dr-1) and divides by
    128 * 2**(kG-1) = 2**14, i.e. k = 15.
    """
    _check_k("k_dr", k_dr)
    _check_k("k", k, low=1)
    frac = _scaled_frac(g, 0) + (k_dr - 1)  # grid of SR(2**(k_dr-1) * g / R)
    fmt = Format(bits=k_dr, frac_bits=frac)
    n = requantize(g.q, g.frac_bits, fmt, Rounding.STOCHASTIC, Overflow.SAT_SYM, u=u)
    return FixedArray(n, k - 1)


def gbn_quantize(g: FixedArray, k: int = 15) -> FixedArray:
    """fgBN = Q(g, k): the BatchNorm gamma/beta gradients, no R scaling, no clip."""
    _check_k("k", k, low=1)
    return FixedArray(requantize(g.q, g.frac_bits, Format(None, k - 1), HALF_EVEN), k - 1)


def lr_quantize(lr: float, k: int = 10) -> FixedArray:
    """flr = C(Q(lr, k), k): k-1 fractional bits, clipped to +-(2**(k-1) - 1)."""
    _check_k("k", k)
    fmt = Format(bits=k, frac_bits=k - 1)
    return FixedArray(quantize(np.asarray(lr, dtype=np.float64), fmt, HALF_EVEN, Overflow.SAT_SYM), k - 1)
