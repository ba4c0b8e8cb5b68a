"""Compile the engine's kernels ahead of their first use: ``python -m wageubn_sim.warm``.

Each Numba kernel is compiled at its first call for each argument type it meets, and kept in
the disk cache beside the package (`cache=True`). The costliest are the hardware-order MAC
loop (one kernel per MAC kind and overflow: multiply or adder, saturate or wrap; in float32 or
int64, as the values allow) and the execution plan's runtime (one per arena dtype: float32,
float64, int64). `warm_up` runs a small workload through each, so that a later process loads
them from the cache. `make test` runs it in a second process beside the tests, on the other
core (the cache is safe to share: Numba writes each file whole and tolerates a missing one).
"""
from __future__ import annotations

import numpy as np

from .engine.ops.adder2d import adder2d
from .engine.ops.conv2d import Conv2dParams, conv2d
from .engine.registers import Accumulator
from .fixedpoint.format import Format
from .fixedpoint.modes import Overflow


def _narrow_mac_loops():
    """Every MAC kind and overflow of the hardware-order loop, in both of its dtypes: values
    whose sums float32 holds exactly, and values that need int64 (each accumulator narrow
    enough to overflow, so that the loop, not the exact path, runs)."""
    rng = np.random.default_rng(0)
    for magnitude, acc_bits in ((8, 6), (1 << 28, 30)):
        x = rng.integers(-magnitude, magnitude, (1, 2, 4, 4))
        w = rng.integers(-magnitude, magnitude, (2, 2, 3, 3))
        for overflow in (Overflow.SAT, Overflow.WRAP):
            p = Conv2dParams(Format(32, 0), padding=(1, 1), accumulator=Accumulator(acc_bits, overflow))
            conv2d(x, 0, w, None, p)
            adder2d(x, 0, w, None, p)


def _plan_runtimes():
    """The plan's runtime for each arena dtype: a conv, ReLU and linear graph run on floats and
    on integers, its input format narrow (float32 arena), wide (float64) and widest (int64)."""
    from .engine.ops.activation import ActivationParams
    from .engine.ops.flatten import FlattenParams
    from .graph.ir import Graph, GraphInput, Node
    rng = np.random.default_rng(1)
    for bits in (8, 24, 40):
        spec = GraphInput("x", (2, 5, 5), Format(bits, 0))
        w = rng.integers(-100, 100, (3, 2, 3, 3))
        nodes = [Node("conv", "conv2d", ["x"], Conv2dParams(Format(8, 0), padding=(1, 1)), {"weight": w}),
                 Node("relu", "activation", ["conv"], ActivationParams(Format(None, 0))),
                 Node("flat", "flatten", ["relu"], FlattenParams()),
                 Node("fc", "linear", ["flat"], Conv2dParams(Format(8, 0)),
                      {"weight": rng.integers(-100, 100, (4, 75))})]
        graph = Graph([spec], nodes, ["fc"]).check()
        graph.run(rng.standard_normal((3, 2, 5, 5)))
        graph.run(rng.integers(-100, 100, (3, 2, 5, 5)))


WORKLOADS = (_narrow_mac_loops, _plan_runtimes)


def warm_up() -> None:
    """Compile (or load from the cache) the kernels of `WORKLOADS`."""
    for workload in WORKLOADS:
        workload()


if __name__ == "__main__":
    warm_up()
