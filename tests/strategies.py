"""Hypothesis strategies aimed at the edges of the contract."""
from __future__ import annotations

import numpy as np
from hypothesis import reject, strategies as st

from wageubn_sim.fixedpoint import Format, Overflow, Rounding

roundings = st.sampled_from(list(Rounding))
overflows = st.sampled_from(list(Overflow))


@st.composite
def formats(draw, min_bits=2, max_bits=32, min_frac=-8, max_frac=30, unbounded=False):
    signed = draw(st.booleans())
    if unbounded and draw(st.booleans()):
        return Format(None, draw(st.integers(min_frac, max_frac)), True)
    bits = draw(st.integers(max(min_bits, 2 if signed else 1), max_bits if signed else min(max_bits, 61)))
    return Format(bits, draw(st.integers(min_frac, max_frac)), signed)


def edge_ints(limit_bits=61):
    """Integers in the core's domain (the range of s62 for limit_bits=61), weighted toward
    powers of two, +-1 and the extremes, the most negative value included."""
    limit = 1 << limit_bits
    special = st.integers(0, limit_bits - 1).flatmap(
        lambda b: st.sampled_from([1 << b, (1 << b) - 1, (1 << b) + 1, -(1 << b), -(1 << b) + 1,
                                   -(1 << b) - 1]))
    return st.one_of(st.integers(-limit, limit - 1), special, st.integers(-300, 300),
                     st.just(-limit))


@st.composite
def int_arrays(draw, max_size=40, limit_bits=61):
    values = draw(st.lists(edge_ints(limit_bits), min_size=0, max_size=max_size))
    return np.array(values, dtype=np.int64)


def u32_words(n):
    return st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n).map(
        lambda v: np.array(v, dtype=np.uint32))


@st.composite
def dyadic_floats(draw, max_size=40, mant_bits=40, exp_range=(-40, 20)):
    """float64 arrays of exact dyadic values with ties and zeros well represented."""
    n = draw(st.integers(0, max_size))
    mant = draw(st.lists(st.integers(-(1 << mant_bits), 1 << mant_bits), min_size=n, max_size=n))
    exps = draw(st.lists(st.integers(*exp_range), min_size=n, max_size=n))
    return np.array([m * 2.0 ** e for m, e in zip(mant, exps)], dtype=np.float64)


# ---- small integer graphs that QONNX can express ----------------------------------------------
QONNX_ROUNDINGS = [Rounding.HALF_EVEN, Rounding.HALF_AWAY, Rounding.FLOOR, Rounding.TOWARD_ZERO]


@st.composite
def _register(draw, optional=True, unbounded=True):
    """(format or None, rounding, overflow) of an output register QONNX can hold."""
    if optional and draw(st.booleans()):
        return None, Rounding.HALF_EVEN, Overflow.SAT_SYM
    frac = draw(st.integers(-2, 10))
    if unbounded and draw(st.booleans()):
        fmt = Format(None, frac)
    else:
        signed = draw(st.booleans())
        fmt = Format(draw(st.integers(2 if signed else 1, 12)), frac, signed)
    return fmt, draw(st.sampled_from(QONNX_ROUNDINGS)), draw(st.sampled_from([Overflow.SAT, Overflow.SAT_SYM]))


def _ints(draw, shape, fmt):
    return np.array(draw(st.lists(st.integers(fmt.min_int, fmt.max_int), min_size=int(np.prod(shape)),
                                  max_size=int(np.prod(shape)))), np.int64).reshape(shape)


class _Chain:
    """A graph built node by node, each node checked (shapes, formats) as it is added."""

    def __init__(self, spec):
        self.spec, self.nodes, self.value = spec, [], spec.name

    def add(self, op, params, arrays=None, inputs=None):
        from wageubn_sim.graph.ir import Node
        node = Node(f"n{len(self.nodes)}", op, inputs or [self.value], params, arrays or {})
        self.nodes.append(node)
        self.value = node.name
        self.graph()
        return node

    def graph(self):
        from wageubn_sim.graph.ir import Graph
        return Graph([self.spec], self.nodes, [self.value]).check()


@st.composite
def qonnx_graphs(draw):
    """A graph of conv, ReLU/ReLU6, pooling, requantize, upsample, concat, add, flatten and
    linear, with random formats and registers (the ops and modes QONNX has)."""
    from wageubn_sim.engine.ops.activation import ActivationParams
    from wageubn_sim.engine.ops.add import AddParams
    from wageubn_sim.engine.ops.concat import ConcatParams
    from wageubn_sim.engine.ops.conv2d import Conv2dParams
    from wageubn_sim.engine.ops.pool import PoolParams
    from wageubn_sim.engine.ops.requantize import RequantizeParams
    from wageubn_sim.engine.ops.upsample import UpsampleParams
    from wageubn_sim.graph.ir import GraphInput
    from wageubn_sim.engine.ops.flatten import FlattenParams

    c, h = draw(st.integers(1, 3)), draw(st.integers(3, 6))
    signed = draw(st.booleans())
    spec = GraphInput("input", (c, h, h), Format(draw(st.integers(2 if signed else 1, 8)),
                                                 draw(st.integers(0, 5)), signed))
    chain = _Chain(spec)
    add, nodes = chain.add, chain.nodes

    o, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    w_fmt = Format(draw(st.integers(2, 6)), draw(st.integers(0, 6)))
    b_fmt = draw(st.one_of(st.none(), st.builds(Format, st.integers(2, 12), st.integers(0, 12))))
    in_reg = draw(st.one_of(st.none(), st.builds(Format, st.integers(2, 9), st.integers(0, 6))))
    out_fmt, rounding, overflow = draw(_register())
    arrays = {"weight": _ints(draw, (o, c, k, k), w_fmt)}
    if b_fmt is not None:
        arrays["bias"] = _ints(draw, (o,), b_fmt)
    pad = draw(st.integers(0, k // 2))
    add("conv2d", Conv2dParams(w_fmt, b_fmt, (draw(st.integers(1, 2)),) * 2, (pad, pad), input_register=in_reg,
                               out_fmt=out_fmt, rounding=rounding if out_fmt or in_reg else Rounding.HALF_EVEN,
                               out_overflow=overflow), arrays)
    reg = draw(_register())
    add("activation", ActivationParams(reg[0], draw(st.sampled_from([None, 6])), None, reg[1], reg[2]))
    if nodes[-1].out_shape[1] >= 2 and draw(st.booleans()):
        if draw(st.booleans()):
            add("max_pool2d", PoolParams((2, 2), (2, 2)))
        else:
            fmt, r, ov = draw(_register(optional=False))
            add("avg_pool2d", PoolParams((2, 2), (2, 2), out_fmt=fmt, rounding=r, overflow=ov))
    if draw(st.booleans()):
        fmt, r, ov = draw(_register(optional=False))
        add("requantize", RequantizeParams(fmt, r, ov))
    if draw(st.booleans()):
        add("upsample", UpsampleParams((draw(st.integers(1, 2)), draw(st.integers(1, 2)))))
    if draw(st.booleans()):
        first = chain.value
        reg = draw(_register())
        add("activation", ActivationParams(reg[0], None, None, reg[1], reg[2]))
        reg = draw(_register())
        op, params = draw(st.sampled_from([("concat", ConcatParams), ("add", AddParams)]))
        add(op, params(*reg), inputs=[first, chain.value])
    if draw(st.booleans()):
        add("flatten", FlattenParams())
        k = int(np.prod(nodes[-1].out_shape))
        w_fmt = Format(draw(st.integers(2, 5)), draw(st.integers(0, 5)))
        reg = draw(_register())
        add("linear", Conv2dParams(w_fmt, out_fmt=reg[0], rounding=reg[1], out_overflow=reg[2]),
            {"weight": _ints(draw, (draw(st.integers(1, 3)), k), w_fmt)})
    return chain.graph()


# ---- small graphs of the ops an execution plan runs -----------------------------------------
@st.composite
def _any_register(draw, optional=True):
    """(format or None, rounding, overflow): every deterministic rounding and overflow mode."""
    if optional and draw(st.booleans()):
        return None, Rounding.HALF_EVEN, Overflow.SAT_SYM
    frac = draw(st.integers(-3, 12))
    if draw(st.booleans()):
        fmt = Format(None, frac)
    else:
        signed = draw(st.booleans())
        fmt = Format(draw(st.integers(2 if signed else 1, 14)), frac, signed)
    rounding = draw(st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC]))
    return fmt, rounding, draw(overflows)


@st.composite
def plan_graphs(draw):
    """A small graph of conv (strides, padding, dilation, groups, input registers, exact, wrapping
    and saturating accumulators), ReLU/ReLU6, max pooling, residual add, requantize, thresholds,
    flatten and linear, with random formats and registers: what `execution.plan` compiles, and now and then an
    accumulator it leaves to the layer-by-layer path."""
    from wageubn_sim.engine.ops.activation import ActivationParams
    from wageubn_sim.engine.ops.add import AddParams
    from wageubn_sim.engine.ops.conv2d import Conv2dParams
    from wageubn_sim.engine.ops.pool import PoolParams
    from wageubn_sim.engine.registers import Accumulator
    from wageubn_sim.engine.ops.requantize import RequantizeParams
    from wageubn_sim.graph.ir import GraphInput
    from wageubn_sim.engine.ops.flatten import FlattenParams

    groups = draw(st.integers(1, 2))
    c, h = groups * draw(st.integers(1, 2)), draw(st.integers(3, 7))
    signed = draw(st.booleans())
    spec = GraphInput("input", (c, h, h), Format(draw(st.integers(2 if signed else 1, 9)),
                                                 draw(st.integers(-2, 6)), signed))
    chain = _Chain(spec)
    nodes = chain.nodes

    def add(op, params, arrays=None, inputs=None):
        try:
            return chain.add(op, params, arrays, inputs)
        except ValueError:  # a bias its saturating accumulator cannot preload: refused
            reject()

    def conv(channels_in, o, k, stride, pad, dilation, g, linear=False):
        w_fmt = Format(draw(st.integers(2, 8)), draw(st.integers(-2, 7)))
        b_fmt = draw(st.one_of(st.none(), st.builds(Format, st.integers(2, 16), st.integers(-2, 14))))
        in_reg = draw(st.one_of(st.none(), st.builds(Format, st.integers(2, 10), st.integers(-2, 8))))
        acc = draw(st.one_of(st.just(Accumulator()),
                             st.builds(Accumulator, st.integers(4, 40), st.just(Overflow.WRAP)),
                             st.builds(Accumulator, st.integers(12, 48), st.sampled_from([Overflow.SAT, Overflow.SAT_SYM]))))
        out_fmt, rounding, overflow = draw(_any_register())
        shape = (o, channels_in) if linear else (o, channels_in // g, k, k)
        arrays = {"weight": _ints(draw, shape, w_fmt)}
        if b_fmt is not None:
            arrays["bias"] = _ints(draw, (o,), b_fmt)
        params = Conv2dParams(w_fmt, b_fmt, (stride,) * 2, (pad,) * 2, (dilation,) * 2, g, in_reg, acc,
                              out_fmt, rounding, overflow)
        add("linear" if linear else "conv2d", params, arrays)

    k = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2)) if k > 1 and h >= 5 else 1
    conv(c, groups * draw(st.integers(1, 3)), k, draw(st.integers(1, 2)), draw(st.integers(0, k)), dilation, groups)
    reg = draw(_any_register())
    act_in = draw(st.one_of(st.none(), st.builds(Format, st.integers(2, 10), st.integers(-2, 8))))
    add("activation", ActivationParams(reg[0], draw(st.sampled_from([None, 6])), act_in, reg[1], reg[2]))
    side = nodes[-1].out_shape[1]
    if side >= 2 and draw(st.booleans()):
        kp = draw(st.integers(2, min(3, side)))
        dilation = draw(st.integers(1, 2)) if 2 * kp - 1 <= side else 1
        add("max_pool2d", PoolParams((kp, kp), (draw(st.integers(1, 2)),) * 2,
                                     (draw(st.integers(0, kp // 2)),) * 2, (dilation,) * 2))
    if draw(st.booleans()):
        fmt, r, ov = draw(_any_register(optional=False))
        add("requantize", RequantizeParams(fmt, r, ov))
    if draw(st.booleans()):  # a residual branch: conv 3x3 same padding, then add
        first = chain.value
        channels = nodes[-1].out_shape[0]
        conv(channels, channels, 3, 1, 1, 1, 1)
        reg = draw(_any_register())
        add("add", AddParams(*reg), inputs=[first, chain.value])
    if draw(st.booleans()):  # a thresholds layer (an imported float chain), per channel or shared
        from wageubn_sim.engine.ops.thresholds import ThresholdsParams
        last = nodes[-1]
        rows = draw(st.sampled_from([1, last.out_shape[0]]))
        levels = draw(st.integers(0, 15))
        reach = draw(st.sampled_from([8, 300, 1 << 40]))  # near the values, or beyond any of them
        table = np.sort(np.array(draw(st.lists(st.integers(-reach, reach), min_size=rows * levels,
                                               max_size=rows * levels)), np.int64).reshape(rows, levels), axis=1)
        signs = np.array(draw(st.lists(st.sampled_from([-1, 1]), min_size=rows, max_size=rows)), np.int64)
        out = Format(5, draw(st.integers(-2, 6)), draw(st.booleans()))
        step = draw(st.sampled_from([1, 1, 2]))  # 2: levels two apart (a bipolar sign's -1, +1)
        levels = min(levels, (out.max_int - out.min_int) // step)
        table = table[:, :levels]
        first = draw(st.integers(out.min_int, out.max_int - step * levels))
        add("thresholds", ThresholdsParams(out, first, last.out_fmt.frac_bits, step),
            {"thresholds": table, "signs": signs})
    if draw(st.booleans()):
        add("flatten", FlattenParams())
        conv(int(np.prod(nodes[-1].out_shape)), draw(st.integers(1, 4)), 1, 1, 0, 1, 1, linear=True)
    return chain.graph()
