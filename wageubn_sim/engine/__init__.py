"""The integer engine: one op per file, each a small params struct and a kernel.

Numba's threading layer, unless NUMBA_THREADING_LAYER says otherwise, is chosen for the GEMM
the exact path will use (measured on the 2-core project machine, CIFAR ResNet-18 batch 8):
with torch's int8 GEMM, Numba's OpenMP layer (about 1.5x faster than workqueue there); with
BLAS floats only (no torch, or WAGEUBN_SIM_INT8_GEMM=0), the workqueue layer, because OpenMP
threads spin after a parallel region and take both cores from the BLAS call that follows
(OpenMP was 2x slower there). Results never depend on the layer or the thread count: every
parallel loop writes disjoint outputs, and its reductions are integer counts and extrema
(order-free).
"""
import importlib.util
import os

import numba


def _threading_layer() -> str:
    if (os.environ.get("WAGEUBN_SIM_INT8_GEMM", "1") != "0"
            and importlib.util.find_spec("torch") is not None):
        try:  # the layer needs the system's libgomp; without it, workqueue
            import numba.np.ufunc.omppool  # noqa: F401
            return "omp"
        except ImportError:
            pass
    return "workqueue"


if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = _threading_layer()
