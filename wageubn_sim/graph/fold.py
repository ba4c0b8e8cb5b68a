"""Fold each BatchNorm into the conv before it (docs/arithmetic.md §9, folded BatchNorm):
a graph-to-graph pass on integer graphs, so it also applies to a loaded graph and needs no
torch."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from ..engine.ops.conv2d_bn import Conv2dBatchNormParams
from ..fixedpoint.modes import Rounding
from ..fixedpoint.reference import round_fraction
from .ir import Graph, Node


def fold_batchnorm(graph: Graph, multiplier_bits: int = 16) -> Graph:
    """A new graph where every conv2d -> batchnorm2d pair that can fold is one conv2d_bn node
    (named after the BatchNorm, so later nodes read it unchanged). A pair folds when the conv
    feeds only the BatchNorm, the conv has no output register (iostrict rounds there) and the
    BatchNorm no input register. ``multiplier_bits``: the signed width of the per-channel
    multipliers gamma/std (one grid per layer, as wide as the largest allows).
    Returns the new graph and leaves ``graph`` unchanged."""
    if not 2 <= multiplier_bits <= 31:
        raise ValueError(f"multiplier_bits={multiplier_bits}: choose 2..31")
    readers: dict = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node.name)
    by_name = {n.name: n for n in graph.nodes}
    folded_convs, nodes = set(), []
    for node in graph.nodes:
        conv = by_name.get(node.inputs[0]) if node.op == "batchnorm2d" else None
        if (conv is not None and conv.op == "conv2d" and readers.get(conv.name) == [node.name]
                and conv.name not in graph.outputs and conv.params.out_fmt is None
                and node.params.input_register is None):
            folded_convs.add(conv.name)
            nodes.append(_fold_pair(conv, node, multiplier_bits))
        else:
            nodes.append(node)
    nodes = [n for n in nodes if n.name not in folded_convs]
    meta = dict(graph.meta, folded_batchnorm={"multiplier_bits": multiplier_bits})
    return Graph(graph.inputs, nodes, graph.outputs, meta)


def _real(node: Node, role: str, fmt, default: int) -> list:
    """The exact real values of a BatchNorm register, per channel (``default`` when absent)."""
    channels = len(node.arrays["mean"])
    if fmt is None:
        return [Fraction(default)] * channels
    return [Fraction(int(v), 2 ** fmt.frac_bits) for v in node.arrays[role]]


def folded_registers(ratio, beta, mean, acc_frac: int, multiplier_bits: int) -> tuple:
    """The folded registers of per-channel exact ``ratio`` (gamma/std), ``beta`` and ``mean``
    (Fractions) after an accumulator at 2**-acc_frac: (multipliers on 2**-f_m, half to even,
    one grid per layer, the finest on which the largest fits ``multiplier_bits`` signed bits;
    offsets beta - m * mean on 2**-(acc_frac + f_m), half to even; f_m)."""
    limit = (1 << (multiplier_bits - 1)) - 1
    largest = max((abs(r) for r in ratio), default=Fraction(0))
    two = Fraction(2)  # powers of two as Fractions: 2 ** -f of an int would be a float
    frac = 0
    if largest:  # the finest grid on which the largest ratio still fits (negative for a large one)
        frac = multiplier_bits
        while abs(round_fraction(largest * two ** frac, Rounding.HALF_EVEN)) > limit:
            frac -= 1
        while abs(round_fraction(largest * two ** (frac + 1), Rounding.HALF_EVEN)) <= limit:
            frac += 1
    mult = [round_fraction(r * two ** frac, Rounding.HALF_EVEN) for r in ratio]
    offset = [round_fraction((b - m * two ** -frac * mu) * two ** (acc_frac + frac),
                             Rounding.HALF_EVEN) for b, m, mu in zip(beta, mult, mean)]
    return np.array(mult, np.int64), np.array(offset, np.int64), frac


def _fold_pair(conv: Node, bn: Node, multiplier_bits: int) -> Node:
    bp = bn.params
    acc_frac = conv.out_fmt.frac_bits  # F: recorded when the graph was compiled
    ratio = [g / s for g, s in zip(_real(bn, "gamma", bp.gamma_fmt, 1), _real(bn, "std", bp.std_fmt, 1))]
    mult, offset, frac = folded_registers(ratio, _real(bn, "beta", bp.beta_fmt, 0),
                                          _real(bn, "mean", bp.mean_fmt, 0), acc_frac, multiplier_bits)
    fields = {f.name: getattr(conv.params, f.name) for f in dataclasses.fields(conv.params)}
    fields.update(out_fmt=bn.out_fmt, rounding=bp.rounding, out_overflow=bp.overflow,
                  accumulator_frac=acc_frac, multiplier_frac=frac)
    arrays = {k: np.array(v) for k, v in conv.arrays.items()}
    arrays.update(multiplier=mult, offset=offset)
    return Node(bn.name, "conv2d_bn", list(conv.inputs), Conv2dBatchNormParams(**fields), arrays,
                f"{conv.source}+{bn.source}", bn.out_fmt, bn.out_shape)
