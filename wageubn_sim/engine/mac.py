"""The multiply-accumulate core shared by Conv2d, Linear and Adder2d.

Two ways to the same sums:

* `exact_window_matmul`: when the accumulator cannot overflow (exact, or WRAP, which is the
  exact sum mod 2**bits in any order, or SAT with a bound that never reaches the rails), any
  exact method will do. Windows are unrolled (im2col) and multiplied by BLAS in float32 or
  float64, in chunks of the reduction small enough that *every* partial sum is an integer the
  float type holds exactly, whatever order BLAS adds in:
  for a chunk, max_o sum_k |w[o, k]| * max|x| < 2**24 (float32) or 2**53 (float64).
  Chunk results are added in int64. Results do not depend on the thread count.
* `narrow_mac_loop`: a saturating accumulator that can reach its rails depends on the MAC
  order, so the loop nest runs in hardware order, one MAC at a time per output element,
  with the accumulator's rule applied after every addition.
"""
from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange

from ..fixedpoint.core import format_range

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53

OP_MULTIPLY = 0  # acc += x * w
OP_ADDER = 1  # acc += -|x - w| (AdderNet)


@njit(cache=True, parallel=True)
def pad_nchw(x, pad_h, pad_w, value):
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * pad_h, w + 2 * pad_w), value, dtype=x.dtype)
    for i in prange(n * c):
        out[i // c, i % c, pad_h:pad_h + h, pad_w:pad_w + w] = x[i // c, i % c]
    return out


@njit(cache=True, parallel=True)
def im2col(x, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """out[(c, i, j), (n, y, x)] = x[n, c0 + c, y*sh + i*dh - ph, x*sw + j*dw - pw], zero
    outside the input (channel-major K, the order of a torch weight's reshape)."""
    n, _, h, w = x.shape
    for row in prange((c1 - c0) * kh * kw):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        # output columns whose input column is inside [0, w): x_lo <= xo < x_hi
        x_lo = max(0, (pw - j * dw + sw - 1) // sw)
        x_hi = min(ow, (w - 1 + pw - j * dw) // sw + 1) if w - 1 + pw - j * dw >= 0 else 0
        for b in range(n):
            for y in range(oh):
                col = (b * oh + y) * ow
                yi = y * sh + i * dh - ph
                if yi < 0 or yi >= h:
                    for xo in range(ow):
                        out[row, col + xo] = 0
                    continue
                src = x[b, c0 + c, yi]
                dst = out[row, col:col + ow]
                for xo in range(min(x_lo, ow)):
                    dst[xo] = 0
                if sw == 1:  # contiguous: a vectorizable copy
                    off = j * dw - pw
                    if x_hi > x_lo:
                        dst[x_lo:x_hi] = src[x_lo + off:x_hi + off]
                else:
                    for xo in range(x_lo, x_hi):
                        dst[xo] = src[xo * sw + j * dw - pw]
                for xo in range(max(x_hi, x_lo), ow):
                    dst[xo] = 0


def window_matrix(x, c0: int, c1: int, kernel, stride, padding, dilation, out_size):
    """A builder of the (K, N*OH*OW) window matrix of channels c0..c1 of x, for
    `exact_matmul`'s ``cols_source``: called with a dtype, it unrolls the windows in it."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_size

    def build(dtype):
        out = np.empty(((c1 - c0) * kh * kw, x.shape[0] * oh * ow), dtype=dtype)
        im2col(x, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out)
        return out
    return build


@njit(cache=True)
def _chunk_ends(cs, budget):
    """Greedy cut of the reduction: each chunk ends as late as possible with
    max_o (cs[o, end] - cs[o, start]) < budget, where cs[o, j] = sum_{k<j} |w[o, k]|.
    Each row is monotonic, so its own last fitting end is a binary search."""
    rows, k1 = cs.shape
    ends = np.empty(k1, np.int64)
    count = 0
    start = 0
    while start < k1 - 1:
        end = k1 - 1
        for o in range(rows):
            limit = cs[o, start] + budget  # cs[o, e] < limit
            lo, hi = start, end  # largest e in [start, end] with cs[o, e] < limit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cs[o, mid] < limit:
                    lo = mid
                else:
                    hi = mid - 1
            end = lo
        if end == start:
            return ends[:0], False  # one column alone is too large
        ends[count] = end
        count += 1
        start = end
    return ends[:count], True


def _chunks(cs: np.ndarray, x_max: int, limit: int) -> list[tuple[int, int]] | None:
    """Cut the reduction into chunks whose worst partial sum stays below ``limit``;
    cs[o, j] = sum_{k<j} |w[o, k]| (a leading zero column)."""
    budget = -(-limit // x_max)  # sum |w| * x_max < limit  <=>  sum |w| < ceil(limit / x_max)
    ends, ok = _chunk_ends(cs, budget)
    if not ok:
        return None
    starts = [0] + ends[:-1].tolist()
    return list(zip(starts, ends.tolist()))


_PREPARED: dict = {}


def weight_cache(weight: np.ndarray) -> dict:
    """A scratch dict tied to one read-only weight array (a graph's), for what is derived from
    it once; the entry dies with the array. A writeable array gets a fresh dict each call,
    since it may change in place."""
    if weight.flags.writeable:
        return {}
    key = id(weight)
    entry = _PREPARED.get(key)
    if entry is None or entry["ref"]() is not weight:
        entry = {"ref": weakref.ref(weight, lambda _, key=key: _PREPARED.pop(key, None))}
        _PREPARED[key] = entry
    return entry


def exact_matmul(w: np.ndarray, cols_source, x_max: int, n: int, prepared: dict | None = None) -> np.ndarray:
    """Exact sums w (O, K) x windows (K, N*P) as int64 (N, O, P).

    ``cols_source(dtype)`` builds the (K, N*P) window matrix in that dtype; ``prepared`` is a
    dict that caches what depends on ``w`` alone, across calls. BLAS runs as
    windows^T @ w^T (the faster orientation here); the transpose back to N, O, P is fused
    with the conversion to int64.
    """
    prepared = {} if prepared is None else prepared
    if "abs_prefix" not in prepared:
        cs = np.zeros((w.shape[0], w.shape[1] + 1), np.int64)
        np.cumsum(np.abs(w), axis=1, out=cs[:, 1:])
        prepared["abs_prefix"] = cs
    plans = [(dtype, _chunks(prepared["abs_prefix"], max(x_max, 1), limit))
             for dtype, limit in ((np.float32, FLOAT32_EXACT), (np.float64, FLOAT64_EXACT))
             if x_max < limit]
    plans = [(dtype, chunks) for dtype, chunks in plans if chunks is not None]
    if len(plans) == 2 and len(plans[0][1]) > 8 and len(plans[1][1]) == 1:
        plans = plans[1:]  # one float64 GEMM (about half sgemm's speed here) beats many sgemms
    for dtype, chunks in plans:
        cols = cols_source(dtype)
        if dtype not in prepared:
            prepared[dtype] = w.astype(dtype)
        wf = prepared[dtype]
        out = np.zeros((n, w.shape[0], cols.shape[1] // n), dtype=np.int64)
        # BLAS is faster with the longer dimension as rows (measured both ways here)
        rows_are_pixels = cols.shape[1] >= w.shape[0]
        for a, b in chunks:
            part = cols[a:b].T @ wf[:, a:b].T if rows_are_pixels else wf[:, a:b] @ cols[a:b]
            _add_part(part, rows_are_pixels, out)
        return out
    sums = _int_matmul(w, cols_source(np.int64))  # (O, N*P)
    return np.ascontiguousarray(sums.reshape(w.shape[0], n, -1).transpose(1, 0, 2))


@njit(cache=True, parallel=True)
def _add_part(part, pixels_first, out):
    """out[n, o, p] += part[n * P + p, o] (pixels_first) or part[o, n * P + p]: exact, the
    part holding integers."""
    n_batch, o_total, pixels = out.shape
    for job in prange(n_batch * o_total):
        b = job // o_total
        o = job % o_total
        for p in range(pixels):
            v = part[b * pixels + p, o] if pixels_first else part[o, b * pixels + p]
            out[b, o, p] += np.int64(v)


@njit(cache=True, parallel=True)
def _int_matmul(a, b):
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
    for i in prange(a.shape[0]):
        for k in range(a.shape[1]):
            aik = a[i, k]
            if aik != 0:
                for j in range(b.shape[1]):
                    out[i, j] += aik * b[k, j]
    return out


@njit(cache=True, parallel=True)
def narrow_mac_loop(xp, w, bias, prod_shift, groups, sh, sw, dh, dw, oh, ow, acc_bits,
                    acc_overflow, kernel_major, k_split, op, out, acc_events):
    """One accumulator per output element, MACs in hardware order, overflow after each add.

    xp: padded input (N, C, Hp, Wp); w: (O, C/groups, KH, KW); bias: (O,) already aligned;
    products are shifted left by ``prod_shift`` to the accumulator's grid. ``acc_bits == 0``
    means exact. acc_events[n, o] counts the additions that wrapped or saturated.
    """
    n_batch = xp.shape[0]
    o_total, cg, kh, kw = w.shape
    wrap = acc_overflow == 0 and acc_bits != 0
    if acc_bits == 0:  # exact: rails outside the domain, never reached
        lo, hi = -(np.int64(1) << 62), np.int64(1) << 62
    else:
        lo, hi = format_range(acc_bits, True, acc_overflow)
    wrap_shift = 64 - acc_bits
    og = o_total // groups
    k_total = cg * kh * kw
    chunk = (k_total + k_split - 1) // k_split
    for job in prange(n_batch * o_total):
        b = job // o_total
        o = job % o_total
        c0 = (o // og) * cg
        events = 0
        acc = np.empty((k_split, oh, ow), dtype=np.int64)
        for s in range(k_split):
            for y in range(oh):
                for x in range(ow):
                    acc[s, y, x] = bias[o] if s == 0 else 0
        for t in range(k_total):
            s = t // chunk
            if kernel_major:  # t = (i, j, c)
                c = t % cg
                i = t // (cg * kw)
                j = (t // cg) % kw
            else:  # t = (c, i, j)
                c = t // (kh * kw)
                i = (t // kw) % kh
                j = t % kw
            wt = w[o, c, i, j]
            for y in range(oh):
                row = xp[b, c0 + c, y * sh + i * dh, j * dw:]
                a = acc[s, y]
                if op == OP_MULTIPLY and not wrap and sw == 1:
                    # the common case, kept branch-free
                    for x in range(ow):
                        total = a[x] + ((row[x] * wt) << prod_shift)
                        fitted = min(max(total, lo), hi)
                        events += fitted != total
                        a[x] = fitted
                    continue
                for x in range(ow):
                    xv = row[x * sw]
                    if op == OP_MULTIPLY:
                        p = (xv * wt) << prod_shift
                    else:  # the caller aligned x and w to one grid
                        d = xv - wt
                        p = -d if d >= 0 else d
                    total = a[x] + p
                    if wrap:  # keep the low acc_bits bits, sign-extended
                        fitted = (total << wrap_shift) >> wrap_shift
                    else:
                        fitted = min(max(total, lo), hi)
                    events += fitted != total
                    a[x] = fitted
        for s in range(1, k_split):  # partial sums added in order into the first
            for y in range(oh):
                for x in range(ow):
                    total = acc[0, y, x] + acc[s, y, x]
                    if wrap:
                        fitted = (total << wrap_shift) >> wrap_shift
                    else:
                        fitted = min(max(total, lo), hi)
                    events += fitted != total
                    acc[0, y, x] = fitted
        out[b, o] = acc[0]
        acc_events[b, o] = events
