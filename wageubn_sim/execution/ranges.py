"""Static ranges: for every value of a graph, integer bounds [lo, hi] on its own grid that hold
for every input the input format allows: the graph executed on intervals, op by op, by each
op's ``static_range`` rule (`engine.spec`) and its output register (`engine.ranges`), in exact
Python integers.

They size what the graph leaves unbounded (a QONNX export gives an unbounded format the
narrowest bit width its range needs, so that the Quant it writes never clamps) and prove the
execution plan's arithmetic exact.
"""
from __future__ import annotations

from ..engine.ranges import fit_range
from ..engine.registry import OPS


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
        op = OPS[node.op]
        ins = [(ranges[i], fracs[i]) for i in node.inputs]
        lo, hi, frac = raw[node.name] = op.static_range(node.params, node.arrays, ins)
        register = op.output_register(node.params)
        ranges[node.name] = (lo, hi) if register is None else \
            fit_range(lo, hi, frac, register.fmt, register.rounding, register.overflow)
        fracs[node.name] = node.out_fmt.frac_bits
    return raw if before_output_register else ranges
