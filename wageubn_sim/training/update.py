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


from ..fixedpoint.core import DOMAIN_LIMIT, magnitude_max, requantize
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.modes import Overflow, Rounding

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


def _store(v: FixedArray, fmt: Format) -> FixedArray:
    return FixedArray(requantize(v.q, v.frac_bits, fmt, Rounding.HALF_EVEN, Overflow.SAT_SYM),
                      fmt.frac_bits)


def momentum_update(w: FixedArray, acc: FixedArray, g: FixedArray, lr: FixedArray,
                    p: UpdateParams = UpdateParams()) -> tuple[FixedArray, FixedArray]:
    """One update step: returns the new (w, acc), stored on their grids."""
    if not (w.q.shape == acc.q.shape == g.q.shape):
        raise ValueError(f"update: weights {w.q.shape}, momentum {acc.q.shape} and gradient "
                         f"{g.q.shape} must have one shape")
    scaled = FixedArray(acc.q, acc.frac_bits + p.momentum_shift)  # acc * 2**-shift, exact
    a = aligned_sum(scaled, g)
    if p.order == "quantize_before":
        a = _store(a, p.acc_fmt)
    step = FixedArray(int(lr.q) * a.q, lr.frac_bits + a.frac_bits)
    new_w = _store(aligned_sum(w, step, -1), p.weight_fmt)
    return new_w, (a if p.order == "quantize_before" else _store(a, p.acc_fmt))
