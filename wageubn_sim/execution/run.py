"""Running a graph: one node, the whole graph (layer by layer, or through its compiled plan),
or the graph from one node on. Written once here; the graph's ``run``, `verify`, training and
the importers all call it.

A graph here is anything with ``inputs`` (one `GraphInput`-like spec: ``name``, ``shape``,
``fmt``, ``quantize``, ``check_shape``), ``nodes`` (``name``, ``op``, ``inputs``, ``params``,
``arrays``, ``source``) and ``outputs``: execution sits below the graph module and imports
nothing of it.
"""
from __future__ import annotations

import dataclasses
import operator
import time
import weakref

import numpy as np

from ..engine.registry import OPS
from ..fixedpoint.format import Format


@dataclasses.dataclass
class RunResult:
    q: np.ndarray  # the output integers
    fmt: Format
    layers: dict  # node name -> engine Output (with trace stages when traced)
    events: dict = dataclasses.field(default_factory=dict)  # node name -> {register: Events}
    scale: tuple | None = None  # the output's float scales (one, or per channel): an imported float chain's
    inexact: tuple = ()  # what the graph computes that is not bit-exact to its source (an import's notes)
    tail: object = None  # float ops after the output integers (`graph.tail.FloatTail`), or None

    @property
    def values(self) -> np.ndarray:
        """The output as float64: its integers on their grid, times its float scales (exact
        while |q| < 2**53 on a power-of-two grid; one float64 product each with a float scale);
        with a float tail, the tail's float32 values."""
        if self.tail is not None:
            return self.tail(self.q).astype(np.float64)
        values = self.q.astype(np.float64) * 2.0 ** -self.fmt.frac_bits
        return values if self.scale is None else values * along_channels(self.scale, values.ndim)


def along_channels(scale, ndim: int) -> np.ndarray:
    """Float scales (one, or one per channel) shaped to multiply an (N, C, ...) array of ``ndim``."""
    scale = np.asarray(scale, np.float64)
    return scale.reshape((1, -1) + (1,) * (ndim - 2)) if scale.size > 1 else scale


def run_node(node, ins: list, trace: bool = False):
    """One node's kernel (its op's spec) on its inputs [(q, frac)]."""
    return OPS[node.op].run(node.params, node.arrays, ins, trace)


def _run_named(node, ins: list, trace: bool):
    """`run_node`, an error naming the node (where a graph runs)."""
    try:
        return run_node(node, ins, trace)
    except (ValueError, OverflowError) as err:
        raise type(err)(f"node {node.name} ({node.op}, from {node.source}): {err}") from err


def node_events(out) -> dict:
    """{register: Events} of a node's run (a kernel of one register reports it as 'output')."""
    return dict(out.register_events) or {"output": out.events}


def run_graph(graph, x, trace: bool = False, timings: dict | None = None, plan: bool | None = None,
              threads: int | None = None) -> RunResult:
    """Run the engine over ``graph``. ``trace`` keeps every node's Output with its stages;
    ``timings``, if given, receives each node's seconds. Without trace, each value is freed
    after its last reader.

    ``plan``: None runs a small graph through its compiled plan (`execution.plan`: one call for
    the whole batch, image by image) and any other layer by layer; False always layer by layer;
    True requires the plan (NotPlannable says why not). Both give the same integers and events.
    ``threads`` bounds the plan's threads."""
    if plan and (trace or timings is not None):
        raise ValueError("the plan runs the graph in one call: it keeps no trace or timings; "
                         "run with plan=False (or None) for them")
    spec = graph.inputs[0]
    if not trace and timings is None and plan is not False:
        compiled = plan_of(graph, required=bool(plan))
        if compiled is not None:
            x = np.asarray(x)
            done = None
            if x.dtype in (np.float32, np.float64) and compiled.quantizes_floats and spec.levels is None:
                spec.check_shape(x)
                done = compiled.run_floats(x, threads)  # the input quantized in the plan
            out, events = done or compiled.run(spec.quantize(x), threads)
            return RunResult(out, compiled.output_fmt, {}, events)
    values = {spec.name: (spec.quantize(x), spec.fmt.frac_bits)}
    last_use = {name: i for i, node in enumerate(graph.nodes) for name in node.inputs}
    layers, events, result = {}, {}, None
    for i, node in enumerate(graph.nodes):
        ins = [values[name] for name in node.inputs]
        start = time.perf_counter()
        out = _run_named(node, ins, trace)
        if timings is not None:
            timings[node.name] = time.perf_counter() - start
        events[node.name] = node_events(out)
        values[node.name] = (out.q, out.fmt.frac_bits)
        if trace:
            layers[node.name] = out
        else:
            for name in node.inputs:
                if last_use[name] == i and name not in graph.outputs:
                    values.pop(name, None)
        if node.name == graph.outputs[0]:
            result = out
    if result is None:
        raise ValueError("the graph computes no output")
    return RunResult(result.q, result.fmt, layers, events)


def run_from(graph, values: dict, start: int, replacement) -> tuple:
    """(output integers, their frac) when node ``start`` is replaced by ``replacement`` (same
    name and inputs, other params), reusing ``values`` {name: (q, frac)} that a run computed
    for the input and the nodes before it."""
    values = dict(values)
    for i in range(start, len(graph.nodes)):
        node = replacement if i == start else graph.nodes[i]
        out = _run_named(node, [values[name] for name in node.inputs], False)
        values[node.name] = (out.q, out.fmt.frac_bits)
    return values[graph.outputs[0]]


# The compiled plan of each graph, kept while its nodes, params and arrays are the same objects
# (arrays are read-only: `Graph` makes them so); weakly, so that it goes with its graph.
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def plan_of(graph, required: bool = False):
    """The compiled plan of ``graph`` as it is now (`execution.plan.build_plan`), built once and
    kept while it does not change; None when the graph runs layer by layer (``required``:
    raise NotPlannable instead)."""
    from .plan import NotPlannable, build_plan
    spec = graph.inputs[0]
    key = [spec, spec.shape, spec.fmt, *graph.outputs]
    for n in graph.nodes:
        key.append(n)
        key.append(n.params)
        key.extend(n.arrays.values())
        key.extend(n.inputs)
    cached = _PLANS.get(graph)
    if cached is None or len(cached[0]) != len(key) or not all(map(operator.is_, cached[0], key)):
        try:
            if any(n.out_shape is None or n.out_fmt is None for n in graph.nodes):
                graph.check()
            built = build_plan(graph)
        except NotPlannable as err:
            built = err
        except (ValueError, OverflowError) as err:  # the layer-by-layer path will say it
            built = NotPlannable(str(err))
        cached = _PLANS[graph] = (key, built)
    if isinstance(cached[1], NotPlannable):
        if required:
            raise cached[1]
        return None
    return cached[1]
