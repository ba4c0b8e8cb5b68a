"""The execution plan: a whole small graph run image by image in one compiled call.

Why: on a small network the layer-by-layer path (`Graph.run(plan=False)`) spends its time in
Python between kernels, tens of microseconds per layer per call, and holds every layer's
output for the whole batch (a batch of 4096 outgrows the caches). The plan is built once per
graph: each node becomes rows of integers (`layout`), every value a slot in a per-image arena,
and `runtime._run_chunk` runs the rows over one image after another, so the arena stays in cache
whatever the batch. Threads take contiguous chunks of the batch; each image's arithmetic is
the same whoever runs it, and the event counts are integer sums per chunk, so the thread
count and the chunking never change a byte.

Exactness: the plan is built only when the graph's static ranges (`execution.ranges`) bound every
value and every partial sum of every layer for every input the input format admits. The arena
dtype is the narrowest that holds them exactly: float32 below 2**24, float64 below 2**53, else
int64 (below 2**61, the domain); a conv whose inputs, weights and partial sums stay below 2**24
works in float32 (its planes and sums in a float32 arena of their own) whatever the arena.
Floats hold integers there, and every partial sum of a MAC is bounded by
|b| + sum |w| * max|x| in any order, so float adds are exact (as in `engine/mac/gemm.py`). Each
register moves values through the engine's register loop (`fixedpoint.loops`: the scalar
primitives in int64, or, a right shift without wrap in a float arena, the float path's rules,
docs §4, exact on those integers). Float input is quantized in the plan
by the input register's rule (half to even, saturating), exact while its rails are float64
integers; the rest goes to `GraphInput.quantize`.

What it covers: conv2d and linear (any accumulator that the static bound shows cannot
saturate; WRAP by its definition, the exact sum mod 2**bits), ReLU/ReLU6, max pooling,
residual add, requantize and flatten, with input registers (iostrict). Anything else, or a
graph too large to gain (`PLAN_MAX_MACS`), runs layer by layer: `build_plan` says why.

Modules: `layout` (the tables' columns), `builder` (graph -> tables), `runtime` (`Plan` and the
compiled call).
"""
from .builder import RULES, NotPlannable, build_plan
from .layout import PARALLEL_MIN_MACS, PLAN_MAX_ARENA, PLAN_MAX_MACS
from .runtime import Plan

__all__ = ["NotPlannable", "PARALLEL_MIN_MACS", "PLAN_MAX_ARENA", "PLAN_MAX_MACS", "Plan", "RULES",
           "build_plan"]
