"""The WAGEUBN weight update (U) on integers, and the same update as a torch optimizer.

Official (TF MomentumOptimizer, momentum 1/4): acc <- acc/4 + G; w <- w - lr * acc; then
acc <- Q(acc, 13) and w <- Q(w, 24). The official code groups the two Q steps with the update
without ordering them (wageubn-scheme.md, ambiguity 2); this contract pins the order:

* ``"quantize_after"`` (default): a = acc/4 + G; w' = w - lr * a; then acc <- Q(a, k_acc),
  w <- Q(w', k_w);
* ``"quantize_before"``: acc <- Q(acc/4 + G, k_acc); w <- Q(w - lr * acc, k_w).

With G on 2**-14, lr on 2**-9 and w on 2**-23 (Q24), lr * a lands on 2**-23, so Q(w', 24) is
exact and only the momentum is rounded (half to even). Registers can be given widths; they
saturate symmetrically. Grids and widths are parameters of `UpdateParams`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ..fixedpoint.scalar import DOMAIN_LIMIT, left_shift_overflows, requantize_scalar_vectorizable
from ..fixedpoint.arrays import magnitude_max
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.modes import OVERFLOW_SAT_SYM, ROUND_HALF_EVEN


ORDERS = ("quantize_after", "quantize_before")


@dataclasses.dataclass(frozen=True)
class UpdateParams:
    momentum_shift: int = 2  # momentum = 2**-shift (official 1/4)
    acc_k: int = 13  # momentum stored as Q(acc, 13): 12 fractional bits
    weight_k: int = 24  # master weights stored as Q(w, 24): 23 fractional bits
    acc_bits: int | None = None  # register widths (None: unbounded)
    weight_bits: int | None = None
    order: str = "quantize_after"

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r}: choose one of {ORDERS}")
        if self.momentum_shift < 0:
            raise ValueError("momentum_shift must be >= 0 (momentum = 2**-shift)")

    @property
    def acc_fmt(self) -> Format:
        return Format(self.acc_bits, self.acc_k - 1)

    @property
    def weight_fmt(self) -> Format:
        return Format(self.weight_bits, self.weight_k - 1)


def aligned_sum(a: FixedArray, b: FixedArray, sign: int = 1) -> FixedArray:
    """a + sign * b, exactly, on the finer of their grids (an OverflowError where that would
    leave the 62-bit domain)."""
    frac = max(a.frac_bits, b.frac_bits)
    if (magnitude_max(a.q) << (frac - a.frac_bits)) + (magnitude_max(b.q) << (frac - b.frac_bits)) \
            >= DOMAIN_LIMIT:
        raise OverflowError(f"a sum on the grid 2**-{frac} leaves the 62-bit domain (grids "
                            f"2**-{a.frac_bits} and 2**-{b.frac_bits}); use coarser grids")
    return FixedArray((a.q << (frac - a.frac_bits)) + sign * (b.q << (frac - b.frac_bits)), frac)


@njit(cache=True, inline="always")
def _shifted_left(v, shift):
    """(v * 2**shift, whether that leaves the domain) for shift >= 0, without wrapping (the
    core's check for an unbounded format, decided before shifting)."""
    if left_shift_overflows(v, shift, 0, True, OVERFLOW_SAT_SYM):
        return np.int64(0), True
    return v << shift, False


@njit(cache=True, inline="always")
def _stored(v, shift, bits, signed=True):
    """v into a register `shift` bits coarser (negative: finer), half to even, saturating
    symmetrically at ``bits`` (0: unbounded); also whether it left the domain."""
    if shift < 0 and bits == 0 and left_shift_overflows(v, -shift, bits, signed, OVERFLOW_SAT_SYM):
        return np.int64(0), True
    return requantize_scalar_vectorizable(v, shift, bits, signed, ROUND_HALF_EVEN, OVERFLOW_SAT_SYM), False


@njit(cache=True, parallel=True)
def _update_flat(w, acc, g, lr, a_limit, acc_up, g_up, before, acc_store, acc_bits, w_up, step_up,
                 w_store, w_bits, reg_shift, reg_bits, reg_signed, new_w, new_acc, register):
    """`momentum_update` element by element, in one pass (its docstring gives the steps; the
    shifts align its grids; |a| < a_limit keeps lr * a in the domain), and the new weights'
    register when ``register`` is not empty. Returns how many elements left the domain."""
    outside = 0
    for i in prange(w.size):
        x, bad_acc = _shifted_left(acc[i], acc_up)
        y, bad_g = _shifted_left(g[i], g_up)
        a = x + y
        bad = bad_acc | bad_g | (a >= DOMAIN_LIMIT) | (a < -DOMAIN_LIMIT)
        a_kept = a
        if before:
            a_kept, bad_store = _stored(a, acc_store, acc_bits)
            bad |= bad_store
        if a_kept >= a_limit or a_kept <= -a_limit:
            bad = True
            a_kept = np.int64(0)
        u, bad_w = _shifted_left(w[i], w_up)
        v, bad_step = _shifted_left(lr * a_kept, step_up)
        total = u - v
        bad |= bad_w | bad_step | (total >= DOMAIN_LIMIT) | (total < -DOMAIN_LIMIT)
        new_w[i], bad_new_w = _stored(total, w_store, w_bits)
        if register.size:
            register[i], bad_register = _stored(new_w[i], reg_shift, reg_bits, reg_signed)
            bad |= bad_register
        if before:
            new_acc[i] = a_kept
        else:
            new_acc[i], bad_new_acc = _stored(a, acc_store, acc_bits)
            bad |= bad_new_acc
        outside += bad | bad_new_w
    return outside


def _product_limit(lr: int) -> int:
    """|a| below it keeps lr * a inside the domain: ceil(2**61 / |lr|)."""
    return -(-DOMAIN_LIMIT // abs(lr)) if lr else DOMAIN_LIMIT


def momentum_update(w: FixedArray, acc: FixedArray, g: FixedArray, lr: FixedArray,
                    p: UpdateParams = UpdateParams(), register: Format | None = None) -> tuple:
    """One update step: returns the new (w, acc), stored on their grids (the module docstring
    gives the order). Every sum is exact on the finer grid of its terms; an element that would
    leave the 62-bit domain raises an OverflowError. With ``register`` (the forward's format
    of these weights), also the new weights in it (half to even, symmetric saturation) as a
    third item, int64. One fused pass (`_update_flat`)."""
    if not (w.q.shape == acc.q.shape == g.q.shape):
        raise ValueError(f"update: weights {w.q.shape}, momentum {acc.q.shape} and gradient "
                         f"{g.q.shape} must have one shape")
    acc_frac = acc.frac_bits + p.momentum_shift  # acc * 2**-shift, exact
    a_frac = max(acc_frac, g.frac_bits)
    kept_frac = p.acc_fmt.frac_bits if p.order == "quantize_before" else a_frac
    step_frac = lr.frac_bits + kept_frac
    w_frac = max(w.frac_bits, step_frac)
    new_w, new_acc = np.empty(w.q.shape, np.int64), np.empty(w.q.shape, np.int64)
    held = np.empty(w.q.shape if register else 0, np.int64)
    outside = _update_flat(
        *(np.ascontiguousarray(v.q, dtype=np.int64).reshape(-1) for v in (w, acc, g)),
        np.int64(int(lr.q)), _product_limit(int(lr.q)), a_frac - acc_frac, a_frac - g.frac_bits, p.order == "quantize_before",
        a_frac - p.acc_fmt.frac_bits, p.acc_bits or 0, w_frac - w.frac_bits, w_frac - step_frac,
        w_frac - p.weight_fmt.frac_bits, p.weight_bits or 0,
        p.weight_fmt.frac_bits - (register.frac_bits if register else 0),
        (register.bits or 0) if register else 0, register.signed if register else True,
        new_w.reshape(-1), new_acc.reshape(-1), held.reshape(-1))
    if outside:
        raise OverflowError(f"update: {outside} element(s) leave the 62-bit domain on the grids "
                            f"2**-{a_frac} (momentum) and 2**-{w_frac} (weights); use coarser grids")
    updated = FixedArray(new_w, p.weight_fmt.frac_bits), FixedArray(new_acc, p.acc_fmt.frac_bits)
    return updated + (held,) if register else updated
