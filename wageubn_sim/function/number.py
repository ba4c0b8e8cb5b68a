"""The WAGEUBN quantizers as torch autograd functions (the seed's `function.number`, corrected).

Every forward computes in float64 through the fixed-point core's float primitives
(`fixedpoint.floats.quantize_to_grid`), so its values are exactly q * 2**-f of the integer
contract (`docs/arithmetic.md`); the result is cast back to the input's dtype, which is
exact while q has at most 24 significant bits in float32. Backward is straight-through
(STE) unless the function exists to quantize the gradient (gwquant, gbnquant, backward_e1,
backward_e2).

Seed names kept: sround, directquant, alldirectquant, constquant, shiftquant, weightquant,
gwquant, gbnquant, errquant. Added: quantize (any format and mode), e1quant (the official
E1), lrquant, backward_e1, backward_e2.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from numba import njit, prange
from torch.autograd import Function

from ..fixedpoint.floats import fake_quantize, quantize_to_grid, scaled_float
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.random_bits import BitSource
from ..fixedpoint.scale import scale_exponent_of_floats

HALF_EVEN = Rounding.HALF_EVEN

#: Random words for stochastic rounding when no BitSource is given (seed 0).
default_bit_source = BitSource(0)


def _on_grid(x: torch.Tensor, fmt: Format, rounding=HALF_EVEN, overflow=Overflow.SAT, u=None):
    """Integer-valued float64 q of x in fmt (torch)."""
    return quantize_to_grid(x, fmt, rounding, overflow, u)


def _values(n: torch.Tensor, frac_bits: int, like: torch.Tensor) -> torch.Tensor:
    return (n * 2.0 ** -frac_bits).to(like.dtype)


def _draw(source: BitSource | None, shape) -> np.ndarray:
    return (source or default_bit_source).draw(tuple(shape))


def _check_k(name, k, low=1):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < low:
        raise ValueError(f"{name}={k!r}: a WAGEUBN bit width is an integer >= {low}")
    return int(k)


# ---- value functions (no autograd) ------------------------------------------------------

def quantize_values(x, fmt: Format, rounding=HALF_EVEN, overflow=Overflow.SAT, u=None):
    return fake_quantize(x, fmt, rounding, overflow, u)


def shift_values(x: torch.Tensor, k: int, limit: int) -> torch.Tensor:
    """R * clip(Q(x / R, k), -limit, limit) / 2**(k-1) scaled: E1 (limit 2**(k-1)) and the
    seed's shiftquant (limit 2**(k-1) - 1)."""
    frac = (k - 1) - scale_exponent_of_floats(x)
    return fake_quantize(x, Format(None, frac), clip=(-limit, limit))


@njit(cache=True, parallel=True)
def _flag_values_flat(x, frac, p, out):
    """`flag_values` element by element (step 2**p), on CPU arrays: the same float64 operations
    (scalings by powers of two, rint, clamps) in one pass. Returns how many elements it cannot
    decide alone (a scaled value not finite, or nonzero below the normal range), for the
    general path."""
    step = 2.0 ** p
    fine_scale, coarse_scale, out_scale = 2.0 ** frac, 2.0 ** (frac - p), 2.0 ** -frac
    undecided = 0
    for i in prange(x.size):
        v = np.float64(x[i])
        magnitude = abs(v)
        t, refused_t = scaled_float(magnitude, fine_scale, frac < 0)
        u, refused_u = scaled_float(magnitude, coarse_scale, frac - p < 0)
        undecided += refused_t | refused_u
        n = min(np.rint(t), step) if t < step else min(np.rint(u), step - 1) * step
        out[i] = (-n if v < 0 else (n if v > 0 else 0.0)) * out_scale
    return undecided


def flag_values(x: torch.Tensor, k: int) -> torch.Tensor:
    """E2, the official flag quantization (see `scheme.e2_quantize` for the integer form)."""
    frac = 2 * (k - 1) - scale_exponent_of_floats(x)
    Format(None, frac)  # both grids must be formats (their scales exact), as below
    Format(None, frac - (k - 1))
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        flat = x.detach().contiguous().numpy().reshape(-1)
        out = np.empty_like(flat)
        if not _flag_values_flat(flat, frac, k - 1, out):
            return torch.from_numpy(out.reshape(tuple(x.shape)))
    return _flag_values_general(x, k, frac)


def _flag_values_general(x: torch.Tensor, k: int, frac: int) -> torch.Tensor:
    """`flag_values` in torch operations, on any device."""
    magnitude = x.double().abs()
    step = 1 << (k - 1)
    small = magnitude * 2.0 ** frac < step  # exact: a power-of-two scaling
    fine = torch.clamp(_on_grid(magnitude, Format(None, frac)), max=step)
    coarse = torch.clamp(_on_grid(magnitude, Format(None, frac - (k - 1))), max=step - 1) * step
    return _values(torch.sign(x.double()) * torch.where(small, fine, coarse), frac, x)


def const_values(x: torch.Tensor, k_dr: int, k: int, u) -> torch.Tensor:
    """G: clip(SR(2**(k_dr-1) * x / R), +-(2**(k_dr-1) - 1)) / 2**(k-1)."""
    frac = (k_dr - 1) - scale_exponent_of_floats(x)
    return fake_quantize(x, Format(k_dr, frac), Rounding.STOCHASTIC, Overflow.SAT_SYM, u, out_frac=k - 1)


# ---- straight-through forward quantizers ------------------------------------------------

class _StraightThrough(Function):
    """y = fn(x, *args) forward, dy passed unchanged backward."""

    @staticmethod
    def forward(ctx, x, fn, *args):
        ctx.n_args = len(args)
        return fn(x, *args)

    @staticmethod
    def backward(ctx, grad):
        return (grad, None) + (None,) * ctx.n_args


def _ste(fn, x, *args):
    return _StraightThrough.apply(x, fn, *args)


def quantize(x, fmt: Format, rounding=HALF_EVEN, overflow=Overflow.SAT, u=None):
    """Fake-quantize x onto ``fmt`` under any rounding/overflow mode (STE backward)."""
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    if rounding == Rounding.STOCHASTIC and u is None:
        u = _draw(None, x.shape)
    return _ste(quantize_values, x, fmt, rounding, overflow, u)


def sround(x, u=None, source: BitSource | None = None):
    """Stochastic rounding to integers, with the contract's random words (not multinomial)."""
    return quantize(x, Format(None, 0), Rounding.STOCHASTIC,
                    u=_draw(source, x.shape) if u is None else u)


def directquant(x, k):
    """Q(x, k) = round(x * 2**(k-1)) / 2**(k-1), half to even, no clip."""
    k = _check_k("k", k)
    return quantize(x, Format(None, k - 1))


def alldirectquant(x, kdec, kall):
    """Q(x, kdec) saturated to +-(2**(kall-1) - 1) LSBs: a kall-bit register."""
    return quantize(x, Format.from_seed(_check_k("kdec", kdec), _check_k("kall", kall, 2)),
                    overflow=Overflow.SAT_SYM)


def weightquant(x, k):
    """fw = C(Q(w, k), k): clipped to +-(1 - 2**(1-k))."""
    k = _check_k("k", k, 2)
    return alldirectquant(x, k, k)


def shiftquant(x, k):
    """The seed's shift quantization R * clip(Q(x/R, k), +-(1 - 2**(1-k))); zeros give zeros."""
    k = _check_k("k", k, 2)
    return _ste(shift_values, x, k, (1 << (k - 1)) - 1)


def e1quant(x, k=8):
    """The official E1: R * clip(Q(x/R, k), -1, 1), 2**k + 1 levels (one more than shiftquant)."""
    k = _check_k("k", k, 2)
    return _ste(shift_values, x, k, 1 << (k - 1))


def errquant(x, k=8, *unused):
    """The official E2 flag quantization (the seed's errquant, which raised)."""
    if unused:
        warnings.warn("errquant's third argument was never used and is ignored", DeprecationWarning,
                      stacklevel=2)
    return _ste(flag_values, x, _check_k("k", k, 2))


def constquant(x, k_dr, k, u=None, source: BitSource | None = None):
    """G, the constant quantization with stochastic rounding; u: uint32 words per element."""
    k_dr, k = _check_k("k_dr", k_dr, 2), _check_k("k", k)
    if u is None:
        u = _draw(source, x.shape)
    return _ste(const_values, x, k_dr, k, u)


def lrquant(lr: float, k: int = 10) -> float:
    """flr = C(Q(lr, k), k), as a Python float."""
    k = _check_k("k", k, 2)
    value = quantize_values(torch.tensor(float(lr), dtype=torch.float64),
                            Format(k, k - 1), overflow=Overflow.SAT_SYM)
    return float(value)


# ---- identity forward, quantized backward -----------------------------------------------

class _QuantizeGradient(Function):
    """y = x forward; dx = fn(dy, *args) backward."""

    @staticmethod
    def forward(ctx, x, fn, *args):
        ctx.fn, ctx.args = fn, args
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (ctx.fn(grad, *ctx.args), None) + (None,) * len(ctx.args)


def _const_gradient(grad, k_dr, k, source):
    return const_values(grad, k_dr, k, _draw(source, grad.shape))


def _decayed_const_gradient(grad, k_dr, k, source, weight, decay_shift):
    return _const_gradient(grad + weight * 2.0 ** -decay_shift, k_dr, k, source)


def gwquant(x, kgw=15, kdr=8, source: BitSource | None = None, decay_shift: int | None = None):
    """Weight gradients through G: constquant(dy, kdr, kgw) with words from ``source``. With
    ``decay_shift`` s, weight decay 2**-s * x is added to dy first (the official code adds its
    L2 decay before G; docs/arithmetic.md §10)."""
    kdr, kgw = _check_k("kdr", kdr, 2), _check_k("kgw", kgw)
    if decay_shift is None:
        return _QuantizeGradient.apply(x, _const_gradient, kdr, kgw, source)
    if isinstance(decay_shift, bool) or not isinstance(decay_shift, (int, np.integer)) \
            or not 0 <= decay_shift <= 62:
        raise ValueError(f"decay_shift={decay_shift!r}: the decay is 2**-decay_shift, an integer "
                         "0..62 (13 for about 1e-4), or None for no decay")
    return _QuantizeGradient.apply(x, _decayed_const_gradient, kdr, kgw, source, x.detach(),
                                   int(decay_shift))


def gbnquant(x, k=15):
    """BatchNorm gamma/beta gradients through G_BN = Q(dy, k)."""
    return _QuantizeGradient.apply(x, quantize_values, Format(None, _check_k("k", k) - 1))


def backward_e1(x, k=8):
    """Errors through E1 (shift quantization) in backward; identity forward."""
    k = _check_k("k", k, 2)
    return _QuantizeGradient.apply(x, shift_values, k, 1 << (k - 1))


def backward_e2(x, k=8):
    """Errors through E2 (flag quantization) in backward; identity forward."""
    return _QuantizeGradient.apply(x, flag_values, _check_k("k", k, 2))
