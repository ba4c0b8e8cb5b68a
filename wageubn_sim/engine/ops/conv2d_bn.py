"""Conv2d with the following BatchNorm folded in (an option, `graph.fold.fold_batchnorm`):
a different datapath from the official one, docs/arithmetic.md §9 (folded BatchNorm).

    acc = conv accumulator (its own registers, at F)            `conv2d.conv2d`
    s   = acc * m_c + o_c          at F + f_m, exact             per output channel c
    y   = round(s) onto the BatchNorm output grid, then its overflow

m_c ~ gamma_c / std_c on the per-layer grid 2**-f_m and o_c ~ beta_c - m_c * mean_c on
2**-(F + f_m) are registers fixed when folding. The division and the xhat register of the
unfolded datapath disappear, so results may differ from it (compare reports by how much).

Overflow bound: |s| <= max|acc| * max|m| + max|o|, checked against the 62-bit domain per run.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...fixedpoint.scalar import DOMAIN_LIMIT
from ...fixedpoint.arrays import magnitude_max
from ...fixedpoint.format import Format
from ..registers import Events, Output, output_stage
from .conv2d import Conv2dParams, accumulator_register, conv2d, mac_arrays, mac_range, mac_spec


@dataclasses.dataclass(frozen=True)
class Conv2dBatchNormParams(Conv2dParams):
    """Conv2dParams of the conv part, where ``out_fmt``, ``rounding`` and ``out_overflow`` are
    those of the folded BatchNorm's output; ``accumulator_frac`` (F) is the conv accumulator's
    grid the offsets were made for, ``multiplier_frac`` (f_m) the multipliers' grid."""

    accumulator_frac: int = 0
    multiplier_frac: int = 0


def conv2d_bn(x: np.ndarray, x_frac: int, weight: np.ndarray, bias, multiplier: np.ndarray,
              offset: np.ndarray, p: Conv2dBatchNormParams, trace: bool = False) -> Output:
    o = weight.shape[0]
    if multiplier.shape != (o,) or offset.shape != (o,):
        raise ValueError(f"Conv2d+BatchNorm: multiplier {multiplier.shape} and offset "
                         f"{offset.shape} must have one entry per output channel ({o})")
    conv_p = Conv2dParams(**{f.name: getattr(p, f.name) for f in dataclasses.fields(Conv2dParams)})
    acc = conv2d(x, x_frac, weight, bias, dataclasses.replace(conv_p, out_fmt=None), trace)
    if acc.fmt.frac_bits != p.accumulator_frac:
        raise ValueError(f"Conv2d+BatchNorm: the accumulator is at 2**-{acc.fmt.frac_bits}, the "
                         f"folded offsets were made for 2**-{p.accumulator_frac}; refold the graph "
                         "for this input format")
    bound = magnitude_max(acc.q) * magnitude_max(multiplier) + magnitude_max(offset)
    if bound >= DOMAIN_LIMIT:
        raise OverflowError("Conv2d+BatchNorm: accumulator x multiplier may leave the 62-bit "
                            "domain; fold with fewer multiplier bits")
    scaled = acc.q * multiplier[None, :, None, None] + offset[None, :, None, None]
    stages = dict(acc.trace)
    if trace:
        stages["scaled"] = scaled
    q, fmt, events, flags = output_stage(scaled, p.accumulator_frac + p.multiplier_frac,
                                         p.out_fmt, p.rounding, p.out_overflow, trace, stages,
                                         acc.flags)
    registers = {**acc.register_events, "output": events}  # the conv's own output: unrounded
    return Output(q, fmt, Events.total(registers.values()), stages, flags, registers, acc.acc_fmt)


def folded_arrays(p: Conv2dBatchNormParams) -> dict:
    """The conv's arrays and the folded BatchNorm's registers: multipliers on 2**-f_m, offsets
    on the product's grid 2**-(F + f_m)."""
    return {**mac_arrays(p), "multiplier": Format(None, p.multiplier_frac),
            "offset": Format(None, p.multiplier_frac + p.accumulator_frac)}


def folded_registers(p: Conv2dBatchNormParams, out) -> list:
    """The conv's accumulator, then the folded BatchNorm's product register, acc * m + o."""
    return accumulator_register(p, out) + [
        ("scaled", out.trace["scaled"], Format(None, out.acc_fmt.frac_bits + p.multiplier_frac))]


def folded_range(p: Conv2dBatchNormParams, arrays, ins):
    lo, hi, frac = mac_range(p, arrays, ins)
    m, o = arrays["multiplier"].astype(object), arrays["offset"].astype(object)
    return (int(min(np.minimum(m * lo, m * hi) + o)), int(max(np.maximum(m * lo, m * hi) + o)),
            frac + p.multiplier_frac)


SPECS = (mac_spec("conv2d_bn", lambda p, a, ins, t: conv2d_bn(*ins[0], a["weight"], a.get("bias"), a["multiplier"],
                                                                a["offset"], p, t), 4,
                  params=Conv2dBatchNormParams, arrays=folded_arrays,
                  array_ranks={"weight": 4, "bias": 1, "multiplier": 1, "offset": 1},
                  static_range=folded_range, inner_registers=folded_registers, trainable=(),
                  backward=None, error_quantizer=None, grad_quantizer=None),)
