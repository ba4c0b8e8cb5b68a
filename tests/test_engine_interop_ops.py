"""The ops QONNX brought (requantize, concat, upsample) against plain-integer references, and
the static ranges (execution/ranges.py) against what the engine computes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from strategies import formats, int_arrays, qonnx_graphs
from wageubn_sim.engine.ops.concat import ConcatParams, concat
from wageubn_sim.engine.ops.requantize import RequantizeParams, requantize_op
from wageubn_sim.engine.ops.upsample import UpsampleParams, upsample
from wageubn_sim.fixedpoint import Format, Overflow, Rounding, reference as ref
from wageubn_sim.execution.ranges import value_ranges
from wageubn_sim.fixedpoint.format import bits_needed

deterministic = st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC])


@given(int_arrays(limit_bits=50), st.integers(-20, 20), formats(max_bits=40, unbounded=True),
       deterministic, st.sampled_from(list(Overflow)))
def test_requantize_is_the_contract_register(q, frac, fmt, rounding, overflow):
    want = [ref.requantize(int(v), frac, fmt, rounding, overflow) for v in q]
    if any(not -2**61 <= v < 2**61 for v in want):  # only an unbounded format leaves the domain
        with pytest.raises(OverflowError, match="62-bit domain"):
            requantize_op(q, frac, RequantizeParams(fmt, rounding, overflow))
        return
    out = requantize_op(q, frac, RequantizeParams(fmt, rounding, overflow))
    assert out.q.tolist() == want and out.fmt == fmt


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(-4, 12)), min_size=1, max_size=4),
       st.integers(0, 2), st.integers(0, 10_000), st.booleans())
def test_concat_aligns_to_the_finest_grid_exactly(parts, n, seed, register):
    """Every input lands on F = max f_i unchanged in value, in order along the channels."""
    rng = np.random.default_rng(seed)
    inputs = [(rng.integers(-2**20, 2**20, (n, c, 2, 3)), f) for c, f in parts]
    finest = max(f for _, f in parts)
    fmt = Format(12, finest - 3) if register else None
    out = concat(inputs, ConcatParams(fmt, Rounding.HALF_AWAY, Overflow.SAT))
    aligned = np.concatenate([x.astype(object) * (1 << (finest - f)) for x, f in inputs], axis=1)
    want = aligned if fmt is None else np.vectorize(
        lambda v: ref.requantize(int(v), finest, fmt, Rounding.HALF_AWAY, Overflow.SAT), otypes=[object])(aligned)
    assert out.q.tolist() == want.tolist()
    assert out.fmt == (fmt or Format(None, finest))


def test_concat_refuses_shapes_that_differ_beyond_channels():
    with pytest.raises(ValueError, match="differ beyond the channel axis"):
        concat([(np.zeros((1, 2, 3, 3), np.int64), 0), (np.zeros((1, 2, 3, 4), np.int64), 0)], ConcatParams())
    with pytest.raises(OverflowError, match="62-bit domain"):  # aligning left never wraps
        concat([(np.array([[[[2**60]]]]), 0), (np.zeros((1, 1, 1, 1), np.int64), 4)], ConcatParams())


@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(0, 100))
def test_upsample_repeats_each_value(sh, sw, n, seed):
    x = np.random.default_rng(seed).integers(-99, 99, (n, 2, 3, 4))
    out = upsample(x, 5, UpsampleParams((sh, sw)))
    assert out.q.shape == (n, 2, 3 * sh, 4 * sw) and out.fmt == Format(None, 5)
    for i in range(3 * sh):
        for j in range(4 * sw):
            assert np.array_equal(out.q[:, :, i, j], x[:, :, i // sh, j // sw])


@pytest.mark.parametrize("scale", [(0, 1), (2,), (2, 2.0), (True, 1)])
def test_upsample_factors_are_positive_int_pairs(scale):
    with pytest.raises(ValueError, match="scale"):
        UpsampleParams(scale)


@given(st.integers(-2**40, 2**40), st.integers(-2**40, 2**40), st.booleans(), st.booleans())
def test_bits_needed_is_the_narrowest_width(a, b, signed, narrow):
    lo, hi = min(a, b), max(a, b)
    if not signed:
        lo, hi = abs(lo), abs(hi)
        lo, hi = min(lo, hi), max(lo, hi)
    bits = bits_needed(lo, hi, signed, narrow)

    def holds(w):
        if not signed:
            return hi <= (1 << w) - 1
        low = -(1 << (w - 1)) + (1 if narrow else 0)
        return low <= lo and hi <= (1 << (w - 1)) - 1
    assert holds(bits) and (bits == (2 if signed else 1) or not holds(bits - 1))


@settings(max_examples=max(4, settings.default.max_examples // 3))
@given(qonnx_graphs(), st.integers(0, 1000))
def test_static_ranges_hold_every_value_the_engine_computes(graph, seed):
    """For inputs at the format's extremes and in between, every node's value (and the value
    each output register rounds) lies in its static range."""
    fmt = graph.inputs[0].fmt
    rng = np.random.default_rng(seed)
    x = rng.integers(fmt.min_int, fmt.max_int + 1, (4, *graph.inputs[0].shape))
    x[0], x[1] = fmt.min_int, fmt.max_int
    traced = graph.run(x, trace=True)
    ranges = value_ranges(graph)
    raw = value_ranges(graph, before_output_register=True)
    for node in graph.nodes:
        out = traced.layers[node.name]
        lo, hi = ranges[node.name]
        assert lo <= int(out.q.min()) and int(out.q.max()) <= hi, node.name
        before = out.trace.get("accumulator", out.trace.get("sum", out.trace.get("joined")))
        if before is not None and getattr(node.params, "out_fmt", None) is not None and node.op != "avg_pool2d":
            r_lo, r_hi, _ = raw[node.name]
            assert r_lo <= int(before.min()) and int(before.max()) <= r_hi, node.name
