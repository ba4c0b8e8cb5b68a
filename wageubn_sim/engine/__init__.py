"""The integer engine: one op per file, each a small params struct and a kernel.

Numba's OpenMP threads spin after a parallel region and steal both cores from the BLAS calls
that follow (measured: half the conv throughput), so the engine uses Numba's workqueue
layer unless NUMBA_THREADING_LAYER says otherwise. Results never depend on the layer or the
thread count: every parallel loop writes disjoint outputs, and its reductions are integer
counts and extrema (order-free).
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
