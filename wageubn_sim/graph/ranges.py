"""Static ranges: for every value of a graph, integer bounds [lo, hi] on its own grid that hold
for every input the input format allows, by interval arithmetic op by op (exact Python-integer
arithmetic, any size; a rounding or a register maps the endpoints, since every
deterministic rounding and every saturation is monotone, and a wrap spans its whole format).

They size what the graph leaves unbounded: a QONNX export gives an unbounded format the
narrowest bit width its range needs, so that the Quant it writes never clamps.
"""
from __future__ import annotations

import numpy as np

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.reference import requantize


def value_ranges(graph, before_output_register: bool = False) -> dict:
    """{value name: (lo, hi)} for the graph's input and every node, on each value's grid (the
    formats `Graph.check` records). ``before_output_register``: instead, {node name: (lo, hi,
    frac)} of each node's value before its output register (the value that register rounds)."""
    spec = graph.inputs[0]
    if not spec.fmt.bounded:
        raise ValueError("the graph input's format is unbounded: no static range")
    ranges = {spec.name: (spec.fmt.min_int, spec.fmt.max_int)}
    fracs = {spec.name: spec.fmt.frac_bits}
    raw = {}
    for node in graph.nodes:
        ins = [(ranges[i], fracs[i]) for i in node.inputs]
        lo, hi, frac = raw[node.name] = _RULES[node.op](node, ins)
        fmt, rounding, overflow = output_register(node.params)
        ranges[node.name] = fit_range(lo, hi, frac, fmt, rounding, overflow)
        fracs[node.name] = node.out_fmt.frac_bits
    return raw if before_output_register else ranges


def output_register(params) -> tuple:
    """(format or None, rounding, overflow) of a node's output register."""
    fmt = getattr(params, "out_fmt", None)
    overflow = getattr(params, "out_overflow", getattr(params, "overflow", Overflow.SAT))
    return fmt, getattr(params, "rounding", Rounding.HALF_EVEN), overflow


def bits_needed(lo: int, hi: int, signed: bool = True, narrow: bool = False) -> int:
    """The narrowest width whose range holds lo..hi: two's complement (``narrow``: without its
    most negative value, as a SAT_SYM register), or unsigned (lo >= 0)."""
    if not signed:
        if lo < 0:
            raise ValueError(f"an unsigned register cannot hold {lo}")
        return max(1, hi.bit_length())
    return max(2, max(hi, -lo if narrow else -lo - 1, 0).bit_length() + 1)


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
    """The input register of iostrict layers (SAT_SYM)."""
    if fmt is None:
        return rng, frac
    return fit_range(*rng, frac, fmt, rounding, Overflow.SAT_SYM), fmt.frac_bits


def _mac(node, ins):
    p = node.params
    (x_lo, x_hi), fx = input_register_range(*ins[0], p.input_register, p.rounding)
    x_lo, x_hi = min(x_lo, 0), max(x_hi, 0)  # padding reads 0
    w = node.arrays["weight"].reshape(node.arrays["weight"].shape[0], -1).astype(object)
    fw = p.weight_fmt.frac_bits
    fb = p.bias_fmt.frac_bits if p.bias_fmt is not None else None
    b = node.arrays.get("bias")
    if node.op == "adder2d":
        frac = max(fx, fw, fb if fb is not None else fx)
        sx, sw = frac - fx, frac - fw
        far = np.maximum(np.abs((x_lo << sx) - (w << sw)), np.abs((x_hi << sx) - (w << sw)))
        lo_o, hi_o = -far.sum(axis=1), np.zeros(len(w), dtype=object)
    else:
        frac = max(fx + fw, fb if fb is not None else fx + fw)
        shift = frac - fx - fw
        lo_o = np.minimum(w * x_lo, w * x_hi).sum(axis=1) * (1 << shift)
        hi_o = np.maximum(w * x_lo, w * x_hi).sum(axis=1) * (1 << shift)
    if b is not None:
        aligned = b.astype(object) * (1 << (frac - fb))
        lo_o, hi_o = lo_o + aligned, hi_o + aligned
    lo, hi = int(min(lo_o)), int(max(hi_o))
    acc = p.accumulator
    if acc.bits is not None:
        lo, hi = fit_range(lo, hi, frac, Format(acc.bits, frac), Rounding.FLOOR, acc.overflow)
    if node.op == "conv2d_bn":
        m = node.arrays["multiplier"].astype(object)
        o = node.arrays["offset"].astype(object)
        lo, hi = int(min(np.minimum(m * lo, m * hi) + o)), int(max(np.maximum(m * lo, m * hi) + o))
        frac += p.multiplier_frac
    return lo, hi, frac


def _batchnorm(node, ins):
    p = node.params
    (x_lo, x_hi), fx = input_register_range(*ins[0], p.input_register, p.rounding)
    frac = max(fx, p.mean_fmt.frac_bits)
    mean = node.arrays["mean"].astype(object) * (1 << (frac - p.mean_fmt.frac_bits))
    d_lo, d_hi = (x_lo << (frac - fx)) - mean, (x_hi << (frac - fx)) - mean
    shift = p.std_fmt.frac_bits + p.xhat_fmt.frac_bits - frac
    std = node.arrays["std"].astype(object)
    up, down = (1 << max(shift, 0)), (1 << max(-shift, 0))
    # xhat = round(d * 2**shift / std), monotone in d: bound it by the floor and ceiling
    h_lo = [(lo * up) // (s * down) for lo, s in zip(d_lo, std)]
    h_hi = [-((-hi * up) // (s * down)) for hi, s in zip(d_hi, std)]
    if p.xhat_fmt.bounded:
        fitted = [fit_range(a, b, 0, Format(p.xhat_fmt.bits, 0), Rounding.HALF_EVEN, p.overflow)
                  for a, b in zip(h_lo, h_hi)]
        h_lo, h_hi = [a for a, _ in fitted], [b for _, b in fitted]
    y_frac = p.xhat_fmt.frac_bits
    gamma = node.arrays["gamma"].astype(object) if "gamma" in node.arrays else np.ones(len(std), object)
    if p.gamma_fmt is not None:
        y_frac += p.gamma_fmt.frac_bits
    beta, beta_shift = np.zeros(len(std), object), 0
    if p.beta_fmt is not None:
        to = max(y_frac, p.beta_fmt.frac_bits)
        gamma = gamma * (1 << (to - y_frac))
        beta, beta_shift, y_frac = node.arrays["beta"].astype(object), to - p.beta_fmt.frac_bits, to
    beta = beta * (1 << beta_shift)
    lo = min(min(a * g, b * g) + be for a, b, g, be in zip(h_lo, h_hi, gamma, beta))
    hi = max(max(a * g, b * g) + be for a, b, g, be in zip(h_lo, h_hi, gamma, beta))
    return int(lo), int(hi), y_frac


def _activation(node, ins):
    p = node.params
    (lo, hi), frac = input_register_range(*ins[0], p.input_register, p.rounding)
    lo, hi = max(lo, 0), max(hi, 0)
    if p.ceiling is not None:
        f = max(frac, 0)
        lo, hi, frac = min(lo << (f - frac), p.ceiling << f), min(hi << (f - frac), p.ceiling << f), f
    return lo, hi, frac


def _avg_pool(node, ins):
    p = node.params
    (lo, hi), frac = ins[0]
    lo, hi = min(lo, 0), max(hi, 0)  # padded cells count as zeros
    return lo, hi, frac


def _add(node, ins):
    p = node.params
    (a, fa), (b, fb) = ins
    frac = max(fa, fb)
    lo = (a[0] << (frac - fa)) + (b[0] << (frac - fb))
    hi = (a[1] << (frac - fa)) + (b[1] << (frac - fb))
    return lo, hi, frac


def _concat(node, ins):
    p = node.params
    frac = max(f for _, f in ins)
    lo = min(r[0] << (frac - f) for r, f in ins)
    hi = max(r[1] << (frac - f) for r, f in ins)
    return lo, hi, frac


def _same(node, ins):
    (lo, hi), frac = ins[0]
    return lo, hi, frac


_RULES = {"conv2d": _mac, "linear": _mac, "adder2d": _mac, "conv2d_bn": _mac,
          "batchnorm2d": _batchnorm, "activation": _activation, "max_pool2d": _same,
          "avg_pool2d": _avg_pool, "add": _add, "flatten": _same, "requantize": _same,
          "concat": _concat, "upsample": _same}
