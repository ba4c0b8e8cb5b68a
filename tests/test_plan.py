"""The execution plan (`execution.plan`) against the layer-by-layer path: the same integers and
the same events on random graphs, whatever the thread count, the chunking or the batch."""
from __future__ import annotations

import re

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import wageubn_sim
from wageubn_sim.execution.plan import NotPlannable
from wageubn_sim.execution.plan.layout import F32
from wageubn_sim.execution.run import plan_of
from wageubn_sim.models import small_cnn

from strategies import plan_graphs, qonnx_graphs
from test_qonnx import grid_inputs


def assert_same_run(got, want):
    assert got.fmt == want.fmt
    assert got.q.dtype == want.q.dtype == np.int64 and got.q.shape == want.q.shape
    assert np.array_equal(got.q, want.q)
    assert got.events == want.events


def _reason(graph):
    try:
        plan_of(graph, required=True)
        return None
    except NotPlannable as err:
        return str(err)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_graphs(), st.integers(0, 2**32 - 1), st.integers(0, 9))
def test_the_plan_equals_the_layer_by_layer_path(graph, seed, n):
    x = grid_inputs(graph, n, seed)
    reason = _reason(graph)
    # the strategy's graphs are plannable but for an accumulator that may saturate MAC by MAC,
    # or a static bound beyond the domain (the layer-by-layer path then checks the data's)
    assert reason is None or "saturating accumulator" in reason or "62-bit domain" in reason, reason
    try:
        want = graph.run(x, plan=False)
    except OverflowError as err:
        assert reason is not None
        with pytest.raises(OverflowError, match=re.escape(str(err))):
            graph.run(x)
        return
    assert_same_run(graph.run(x), want)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=30)
@given(qonnx_graphs(), st.integers(0, 2**32 - 1))
def test_graphs_the_plan_leaves_alone_run_as_before(graph, seed):
    x = grid_inputs(graph, 5, seed)
    assert_same_run(graph.run(x), graph.run(x, plan=False))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
@given(plan_graphs(), st.integers(0, 2**32 - 1), st.integers(1, 40), st.data())
def test_threads_chunks_and_batch_splits_change_no_byte(graph, seed, n, data):
    if _reason(graph) is not None:
        return
    plan = plan_of(graph)
    q = graph.quantize_input(grid_inputs(graph, n, seed))
    out, events = plan.run(q, threads=1)
    for threads in (2, numba.config.NUMBA_NUM_THREADS, 64):
        got, got_events = plan.run(q, threads=threads)
        assert got.tobytes() == out.tobytes() and got_events == events
    cut = data.draw(st.integers(0, n))
    first, e1 = plan.run(q[:cut])
    second, e2 = plan.run(q[cut:], threads=2)
    assert np.concatenate([first, second]).tobytes() == out.tobytes()
    for name, registers in e1.items():
        for register, ev in registers.items():
            ev.add(e2[name][register])
    assert e1 == events


def test_the_small_cnn_runs_planned_at_every_batch_size():
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(small_cnn()).eval()
    x = np.random.default_rng(1).standard_normal((300, 3, 16, 16))
    graph = wageubn_sim.compile(model, x[:1])
    plan = plan_of(graph)
    assert plan is not None and plan.macs == 76288 and plan.dtype == np.float64
    # the first conv's values stay below 2**24: it works in float32, the second in the arena
    assert plan.steps[plan.steps[:, F32] >= 0][:, F32].tolist() == [1, 0, 0]
    want = graph.run(x, plan=False)
    assert_same_run(graph.run(x), want)
    one = [graph.run(x[i:i + 1]).q for i in range(0, 300, 37)]
    assert np.array_equal(np.concatenate(one), want.q[::37])
    empty = graph.run(x[:0])
    assert empty.q.shape == (0, 10) and empty.events == graph.run(x[:0], plan=False).events


def test_a_plan_is_rebuilt_when_a_node_changes_and_required_says_why_not():
    torch.manual_seed(0)
    graph = wageubn_sim.compile(wageubn_sim.quantize_model(small_cnn()).eval(),
                                np.zeros((1, 3, 16, 16)))
    plan = plan_of(graph)
    assert plan_of(graph) is plan  # kept
    node = graph.nodes[0]
    weight = node.arrays["weight"].copy()
    weight[0, 0, 0, 0] = -weight[0, 0, 0, 0] or 1
    weight.flags.writeable = False
    node.arrays["weight"] = weight
    assert plan_of(graph) is not plan
    x = np.random.default_rng(2).standard_normal((7, 3, 16, 16))
    assert_same_run(graph.run(x), graph.run(x, plan=False))
    from wageubn_sim.engine.registers import Accumulator
    import dataclasses
    node.params = dataclasses.replace(node.params, accumulator=Accumulator(16, "SAT"))
    with pytest.raises(NotPlannable, match="saturating accumulator may saturate MAC by MAC"):
        graph.run(x, plan=True)
    assert_same_run(graph.run(x), graph.run(x, plan=False))  # None: layer by layer


def test_values_beyond_2_53_run_planned_in_int64():
    from wageubn_sim.engine.ops.requantize import RequantizeParams
    from wageubn_sim.fixedpoint import Format
    from wageubn_sim.graph.ir import Graph, Node
    torch.manual_seed(0)
    graph = wageubn_sim.compile(wageubn_sim.quantize_model(small_cnn()).eval(), np.zeros((1, 3, 16, 16)))
    last = graph.nodes[-1]
    shifted = Node("shifted", "requantize", [last.name], RequantizeParams(Format(None, last.out_fmt.frac_bits + 30)))
    wide = Graph(graph.inputs, [*graph.nodes, shifted], ["shifted"]).check()
    assert plan_of(wide).dtype == np.int64 and plan_of(wide).steps[0, F32] == 1  # float32 work in an int64 arena
    x = np.random.default_rng(3).standard_normal((9, 3, 16, 16)) * 4
    got = wide.run(x)
    assert np.abs(got.q).max() >= 2**40  # beyond float32 and float64 arenas of this bound
    assert_same_run(got, wide.run(x, plan=False))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)
@given(plan_graphs(), st.integers(0, 2**32 - 1), st.sampled_from([np.float64, np.float32]),
       st.sampled_from([None, "ties", "rails", "nan", "inf", "tiny"]))
def test_the_plan_quantizes_float_inputs_as_the_input_register_does(graph, seed, dtype, odd):
    """Float inputs off the grid (ties of the grid, beyond the rails, float32) are quantized
    inside the plan exactly as `quantize_input` does; what it cannot decide (NaN, inf, values
    scaled below the normal range) goes to `quantize_input`, which refuses it the same way."""
    assume_planned = _reason(graph) is None
    fmt = graph.inputs[0].fmt
    rng = np.random.default_rng(seed)
    shape = (3, *graph.inputs[0].shape)
    x = rng.standard_normal(shape) * 2.0 ** (fmt.bits - 1 - fmt.frac_bits) * 0.7
    flat = x.reshape(-1)
    if odd == "ties":  # exact halves of the grid: rounding to even decides
        flat[::2] = (np.round(flat[::2] * 2.0 ** fmt.frac_bits) + 0.5) * 2.0 ** -fmt.frac_bits
    elif odd == "rails":
        flat[::3] *= 1e6
    elif odd in ("nan", "inf"):
        flat[1] = np.nan if odd == "nan" else -np.inf
    elif odd == "tiny":
        flat[1] = 2.0 ** -1074
    x = x.astype(dtype)
    try:
        want = graph.run(x, plan=False)
    except (ValueError, OverflowError) as err:
        with pytest.raises(type(err), match=re.escape(str(err))):
            graph.run(x)
        return
    got = graph.run(x)
    assert_same_run(got, want)
    if assume_planned and odd is None:
        assert np.array_equal(graph.run(graph.quantize_input(x)).q, want.q)  # integers in: the same


def test_node_names_cannot_collide_with_the_plans_own_spaces():
    """A node named like the plan's space for another node's input register ("r/input") keeps
    its own value: the add reads the ReLU's input, not its registered copy."""
    from wageubn_sim.engine.ops.activation import ActivationParams
    from wageubn_sim.engine.ops.add import AddParams
    from wageubn_sim.fixedpoint import Format, Overflow, Rounding
    from wageubn_sim.graph.ir import Graph, GraphInput, Node
    spec = GraphInput("x", (2, 4, 4), Format(8, 0))
    nodes = [Node("r/input", "activation", ["x"], ActivationParams(None, None, None)),
             Node("r", "activation", ["r/input"], ActivationParams(None, None, Format(4, -3))),
             Node("sum", "add", ["r/input", "r"], AddParams(None, Rounding.HALF_EVEN, Overflow.SAT_SYM))]
    graph = Graph([spec], nodes, ["sum"]).check()
    assert plan_of(graph) is not None
    x = np.arange(-16, 16).reshape(1, 2, 4, 4) * 3
    want = graph.run(x, plan=False)
    assert not np.array_equal(want.q, 2 * np.maximum(x, 0))  # the register changes values
    assert_same_run(graph.run(x), want)


def test_a_max_pool_with_too_many_window_cells_runs_layer_by_layer():
    """The plan's table of window cells is bounded (PLAN_MAX_CELLS): a 32x32 window at stride 1
    on 300x300 (78M cells, a 624 MB table) is refused by its size, and runs layer by layer."""
    from wageubn_sim.engine.ops.pool import PoolParams
    from wageubn_sim.fixedpoint import Format
    from wageubn_sim.graph.ir import Graph, GraphInput, Node
    spec = GraphInput("x", (1, 300, 300), Format(8, 0))
    graph = Graph([spec], [Node("pool", "max_pool2d", ["x"], PoolParams((32, 32), (1, 1)))], ["pool"]).check()
    with pytest.raises(NotPlannable, match="window cells exceed"):
        plan_of(graph, required=True)
    x = np.random.default_rng(4).integers(-128, 128, (1, 1, 300, 300))
    got = graph.run(x)
    windows = np.lib.stride_tricks.sliding_window_view(x[0, 0], (32, 32))
    assert np.array_equal(got.q[0, 0], windows.max(axis=(2, 3)))
