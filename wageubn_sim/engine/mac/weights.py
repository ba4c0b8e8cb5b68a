"""What is derived once from read-only weights (or a training step's read-only activations):
a cache tied to the array's life (`weight_cache`), and each row's sums and extremes
(`weight_summary`), which bound every partial sum of a MAC."""
from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange


_PREPARED: dict = {}



def weight_cache(weight: np.ndarray) -> dict:
    """A scratch dict tied to one read-only array (a graph's weights, or a view of them, e.g.
    Linear's weight seen as 1x1 conv; or a training step's activations, which the forward and
    the weight gradient both unroll), for what is derived from it once; the entry dies with
    the array. A writeable array gets a fresh dict each call, since it may change in place."""
    root = weight
    while isinstance(root.base, np.ndarray):
        root = root.base
    if weight.flags.writeable or root.flags.writeable:
        return {}
    key = (id(root), weight.__array_interface__["data"][0], weight.shape, weight.strides,
           weight.dtype.str)
    entry = _PREPARED.get(key)
    if entry is None or entry["ref"]() is not root:
        entry = {"ref": weakref.ref(root, lambda _, key=key: _PREPARED.pop(key, None))}
        _PREPARED[key] = entry
    return entry



@njit(cache=True, parallel=True)
def _weight_rows(w, row_sums, row_abs, row_lo, row_hi, row_abs_max):
    for o in prange(w.shape[0]):
        total, magnitude, lo, hi, top = 0, 0, w[o, 0], w[o, 0], 0
        for k in range(w.shape[1]):
            v = np.int64(w[o, k])
            total += v
            a = -v if v < 0 else v
            magnitude += a
            lo, hi, top = min(lo, v), max(hi, v), max(top, a)
        row_sums[o], row_abs[o], row_lo[o], row_hi[o], row_abs_max[o] = total, magnitude, lo, hi, top



def weight_summary(w: np.ndarray) -> dict:
    """What the exact methods need of a weight matrix (O, K), in one pass: its range, each
    row's sum, the largest row sum of magnitudes (sum_k |w[o, k]|, the overflow bound's) and
    the largest magnitude. Sums in int64: |w| < 2**61 and K < 2**20 or so keep them exact
    (checked)."""
    o, k = w.shape
    if w.size == 0:
        return {"range": (0, 0), "row_sums": np.zeros(o, np.int64), "row_abs_max": 0, "abs_max": 0}
    w = np.ascontiguousarray(w)
    row_sums, row_abs = np.empty(o, np.int64), np.empty(o, np.int64)
    lo, hi, top = np.empty(o, np.int64), np.empty(o, np.int64), np.empty(o, np.int64)
    _weight_rows(w, row_sums, row_abs, lo, hi, top)  # exact when max|w| * K < 2**62: checked
    if max(-int(lo.min()), int(hi.max())) * k >= 1 << 62:  # refused, sums or not
        raise OverflowError("weight row sums leave int64; the weights are too wide")
    return {"range": (int(lo.min()), int(hi.max())), "row_sums": row_sums,
            "row_abs_max": int(row_abs.max()), "abs_max": int(top.max())}
