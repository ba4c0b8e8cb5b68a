"""`exact_matmul`: exact sums of products by any exact method, since the accumulator cannot
overflow: an int8 GEMM on base-256 digits (`digits`; torch's `_int_mm`, int32 sums exact in
chunks of `DIGIT_CHUNK`) or BLAS in float32/float64 on chunks of the reduction in which every
partial sum is an exact float integer; parts added in int64, so the result depends neither on
the library nor on the thread count."""
from __future__ import annotations

import os
import threading

import numpy as np
from numba import njit, prange

from . import FLOAT32_EXACT, FLOAT64_EXACT
from .digits import (DIGIT_BITS, DIGIT_CHUNK, MAX_DIGIT_GEMMS, _repunit, balanced_digits, digit_offset,
                     offset_digits, split_digits)
from .weights import weight_summary


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


_INT8_GEMM: list = []  # [function or None], resolved on first use


def int8_gemm():
    """An exact int8 x int8 -> int32 GEMM (torch._int_mm, oneDNN's VNNI/AMX kernels) when torch
    is importable and its result checks out here, else None. Integer sums are exact in any
    order, so this changes speed only, never a bit. WAGEUBN_SIM_INT8_GEMM=0 turns it off."""
    if not _INT8_GEMM:
        gemm = None
        if os.environ.get("WAGEUBN_SIM_INT8_GEMM", "1") != "0":
            try:
                import torch

                def gemm(a, b, out=None):
                    """a (M, K) @ b (K, N) as int32, written into ``out`` when given."""
                    ta, tb = torch.from_numpy(_gemm_operand(a)), torch.from_numpy(_gemm_operand(b))
                    if out is None or not _is_row_strided(out):
                        result = torch._int_mm(ta, tb).numpy()
                        if out is not None:
                            out[...] = result
                        return result
                    return torch._int_mm(ta, tb, out=torch.from_numpy(out)).numpy()
                a = np.arange(-128, 127, dtype=np.int8).reshape(15, 17)
                if not np.array_equal(gemm(a, a.T.copy()), a.astype(np.int64) @ a.T.astype(np.int64)):
                    gemm = None
            except Exception:  # no torch, or no integer GEMM in this build: BLAS floats instead
                gemm = None
        _INT8_GEMM.append(gemm)
    return _INT8_GEMM[0]


def _is_row_strided(a: np.ndarray) -> bool:
    """Whether ``a`` is a row-major matrix with rows at least a row apart: numpy gives size-1
    axes arbitrary strides (e.g. (1, 1) for a 1 x 5 matrix), which oneDNN reads as a leading
    dimension smaller than the row and then computes nothing."""
    return a.strides[1] == a.itemsize and a.strides[0] >= a.shape[1] * a.itemsize


def _gemm_operand(a: np.ndarray) -> np.ndarray:
    """``a`` itself if it is row-major (`_is_row_strided`) or column-major alike (its transpose
    is: oneDNN reads it transposed, no copy), else a row-major copy. A column-major reading
    needs both sides above 1: oneDNN gets a 1 x K matrix with strides (1, 1) wrong."""
    if _is_row_strided(a) or (min(a.shape) > 1 and _is_row_strided(a.T)):
        return a
    return a.copy()


_WORKSPACE = threading.local()


def scratch(shape, dtype) -> np.ndarray:
    """An uninitialised array in this thread's reusable buffer, grown to the largest request
    and kept: the stacks of digit products are tens of MB, and glibc maps a block that large
    afresh on every allocation, so that their page faults cost up to half of a training step.
    Valid until the thread's next call; `exact_matmul` uses it for its parts only."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buffer = getattr(_WORKSPACE, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _WORKSPACE.buffer = np.empty(max(nbytes, 1), np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def use_int8_gemm(enabled: bool) -> None:
    """Turn the int8 GEMM on (when available) or off, e.g. to compare both paths."""
    _INT8_GEMM.clear()
    if not enabled:
        _INT8_GEMM.append(None)


def exact_matmul(w: np.ndarray, cols_source, x_range: tuple[int, int], n: int,
                 prepared: dict | None = None, columns: np.ndarray | None = None) -> np.ndarray:
    """Exact sums w (O, K) x windows (K, N*P) as int64 (N, O, P).

    ``cols_source(dtype)`` builds the (K, N*P) window matrix in that dtype; ``x_range`` is
    (min, max) of the values it unrolls (padding zeros aside); ``prepared`` is a dict that
    caches what depends on ``w`` alone, across calls. The first exact method that fits is
    used: the int8 GEMM on base-256 digits (chunks whose partial sums stay below 2**31), else
    BLAS in float32 or float64 (chunks below 2**24 or 2**53), else an int64 loop. Each method
    yields a stack of partial products; one pass adds them (shifted to their digit's weight,
    plus the input digits' constant) into int64, laid out as N, O, P. ``columns`` (a
    permutation of P) puts the sums of window column p at column columns[p] instead, in the
    same pass.
    """
    prepared = {} if prepared is None else prepared
    if "range" not in prepared:
        prepared.update(weight_summary(w))
    x_lo, x_hi = x_range
    x_max = max(-x_lo, x_hi, 0)
    x_digits, w_digits = offset_digits(x_lo, x_hi), balanced_digits(*prepared["range"])
    if int8_gemm() is not None and x_digits[0] * w_digits[0] <= MAX_DIGIT_GEMMS \
            and _digit_sums_fit(w.shape[1], x_digits, w_digits, prepared):
        parts, shifts, pixels_first, sparse_top = _int8_parts(w, cols_source, x_digits,
                                                              w_digits, prepared)
        offsets = digit_offset(*x_digits) * prepared["row_sums"]
    else:
        found = _float_parts(w, cols_source, x_max, prepared)
        if found is None:
            sums = _int_matmul(w, cols_source(np.int64))  # (O, N*P)
            return _permuted(np.ascontiguousarray(sums.reshape(w.shape[0], n, -1).transpose(1, 0, 2)),
                             columns)
        parts, shifts, pixels_first = found
        offsets, sparse_top = np.zeros(w.shape[0], np.int64), None
    pixels = parts.shape[1 if pixels_first else 2] // n
    out = np.empty((n, w.shape[0], pixels), dtype=np.int64)
    if sparse_top is None:
        top_ptr, top_k, top_v = (np.zeros(0, np.int64),) * 3
        w_top, window = np.zeros((0, 0), np.int64), (0,) * 9
    else:
        (top, top_shift, w_top), (kh, kw) = sparse_top, cols_source.kernel
        top_ptr, top_k, top_v = _nonzero_by_pixel(top.reshape(-1, top.shape[3]), top_shift)
        window = (kh, kw, *cols_source.stride, *cols_source.dilation, cols_source.out_size[1],
                  *top.shape[1:3])
    in_pass = columns is not None and not pixels_first
    _sum_parts(parts, shifts, offsets, pixels_first, out, top_ptr, top_k, top_v, w_top, window,
               columns if in_pass else np.zeros(0, np.int64))
    return out if in_pass else _permuted(out, columns)


def _permuted(out: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
    """out (N, O, P) with column p moved to columns[p]."""
    if columns is None:
        return out
    moved = np.empty_like(out)
    moved[:, :, columns] = out
    return moved


def _digit_sums_fit(k: int, x_digits, w_digits, prepared) -> bool:
    """Whether every int64 sum `_sum_parts` forms from digit products stays below 2**62:
    |the digit parts| <= K * 128 R_Dx * 128 R_Dw, |the offset| <= |c| * max_o sum_k |w[o, k]|."""
    parts = k * 128 * _repunit(x_digits[0]) * 128 * _repunit(w_digits[0])
    offset = abs(digit_offset(*x_digits)) * prepared["row_abs_max"]
    return parts + offset < 1 << 62


# A top digit of the input that is nonzero this rarely (ReLU outputs reaching 256: 0.02% to
# 0.8% of them in the bench's ResNet-18s) is cheaper added entry by entry than by a GEMM
# (measured break-even about 0.7% on a 64-channel 3x3 layer on 56x56 here).
SPARSE_TOP_DENSITY = 1 / 128


def _int8_parts(w, cols_source, x_digits, w_digits, prepared):
    """Every digit product x_d (N*P, K) @ w_e^T in int32, shifted by 8(d + e), and, in the
    rows layout, the input's top digit plane when it is sparse enough to be added by
    `_sum_parts` instead (else None)."""
    gemm = int8_gemm()
    (x_count, x_origin), (w_count, w_origin) = x_digits, w_digits
    rows_layout = getattr(cols_source, "prefers_rows", False)
    sparse_top = None
    if rows_layout:  # (N*P, K) digit rows, K kernel-major, against w's digits in that order
        planes = cols_source.digit_planes(x_count, x_origin)
        if x_count > 1 and np.count_nonzero(planes[-1]) < SPARSE_TOP_DENSITY * planes[-1].size:
            if "kernel_major" not in prepared:
                prepared["kernel_major"] = np.ascontiguousarray(
                    cols_source.to_kernel_major(w.astype(np.int64, copy=False)).T)
            sparse_top = (planes[-1], DIGIT_BITS * (x_count - 1), prepared["kernel_major"])
            planes = planes[:-1]
        cols = [cols_source.digit_rows(d, x_count, x_origin) for d in range(len(planes))]
        if "digits_km" not in prepared:  # permuted as int8 digits: a fraction of the bytes
            prepared["digits_km"] = cols_source.to_kernel_major(split_digits(w, w_count, w_origin))
        w_d = prepared["digits_km"]
        pixels_first = sparse_top is not None
        shape = (cols[0].shape[0], w.shape[0]) if pixels_first else (w.shape[0], cols[0].shape[0])
    else:  # (K, N*P) digits against w's digits (D, O, K)
        cols = (cols_source.digit_cols(x_count, x_origin) if hasattr(cols_source, "digit_cols")
                else split_digits(cols_source(np.int64), x_count, x_origin))
        if "digits" not in prepared:
            prepared["digits"] = split_digits(w, w_count, w_origin)
        w_d = prepared["digits"]
        pixels_first = False
        shape = (w.shape[0], cols[0].shape[1])
    k = w.shape[1]
    starts = range(0, k, DIGIT_CHUNK)  # int32 sums: DIGIT_CHUNK * 128 * 128 < 2**31
    parts = scratch((len(starts) * len(cols) * w_count,) + shape, np.int32)
    shifts = np.empty(len(parts), np.int64)
    i = 0
    for a in starts:
        b = min(k, a + DIGIT_CHUNK)
        for dx in range(len(cols)):
            for dw in range(w_count):
                if pixels_first:  # (N*P, K) @ (K, O): each output pixel's O sums together
                    gemm(cols[dx][:, a:b], w_d[dw, :, a:b].T, parts[i])
                elif rows_layout:  # (O, K) @ (K, N*P), the rows read transposed: O-major sums
                    gemm(w_d[dw, :, a:b], cols[dx][:, a:b].T, parts[i])
                else:
                    gemm(w_d[dw, :, a:b], cols[dx][a:b], parts[i])
                shifts[i] = DIGIT_BITS * (dx + dw)
                i += 1
    return parts, shifts, pixels_first, sparse_top


def _float_parts(w, cols_source, x_max, prepared):
    """BLAS chunk products in float32 (or float64), each chunk's sums exact; None if no float
    type holds them."""
    if "abs_prefix" not in prepared:  # cs[o, j] = sum_{k<j} |w[o, k]|, for the chunking
        cs = np.zeros((w.shape[0], w.shape[1] + 1), np.int64)
        np.cumsum(np.abs(w), axis=1, out=cs[:, 1:])
        prepared["abs_prefix"] = cs
    plans = [(dtype, _chunks(prepared["abs_prefix"], max(x_max, 1), limit))
             for dtype, limit in ((np.float32, FLOAT32_EXACT), (np.float64, FLOAT64_EXACT))
             if x_max < limit]
    plans = [(dtype, chunks) for dtype, chunks in plans if chunks is not None]
    if not plans:
        return None
    if len(plans) == 2 and len(plans[0][1]) > 8 and len(plans[1][1]) == 1:
        plans = plans[1:]  # one float64 GEMM (about half sgemm's speed here) beats many sgemms
    dtype, chunks = plans[0]
    cols = cols_source(dtype)
    if dtype not in prepared:
        prepared[dtype] = w.astype(dtype)
    wf = prepared[dtype]
    # BLAS is faster with the longer dimension as rows (measured both ways here)
    pixels_first = cols.shape[1] >= w.shape[0]
    shape = (cols.shape[1], w.shape[0]) if pixels_first else (w.shape[0], cols.shape[1])
    parts = scratch((len(chunks),) + shape, dtype)
    for i, (a, b) in enumerate(chunks):
        if pixels_first:
            np.matmul(cols[a:b].T, wf[:, a:b].T, out=parts[i])
        else:
            np.matmul(wf[:, a:b], cols[a:b], out=parts[i])
    return parts, np.zeros(len(chunks), np.int64), pixels_first


@njit(cache=True, parallel=True)
def _nonzero_by_pixel(plane, shift):
    """The nonzero entries of plane (pixels, C) by pixel (CSR): those of pixel q are channels
    k[e], values v[e] << shift, for e in ptr[q]:ptr[q + 1]."""
    pixels, channels = plane.shape
    ptr = np.zeros(pixels + 1, np.int64)
    for q in prange(pixels):
        count = 0
        for c in range(channels):
            count += plane[q, c] != 0
        ptr[q + 1] = count
    for q in range(pixels):
        ptr[q + 1] += ptr[q]
    k = np.empty(ptr[pixels], np.int64)
    v = np.empty(ptr[pixels], np.int64)
    for q in prange(pixels):
        e = ptr[q]
        for c in range(channels):
            if plane[q, c] != 0:
                k[e], v[e] = c, np.int64(plane[q, c]) << shift
                e += 1
    return ptr, k, v


@njit(cache=True, parallel=True)
def _sum_parts(parts, shifts, offsets, pixels_first, out, top_ptr, top_k, top_v, w_top, window,
               columns):
    """out[n, o, p] = offsets[o] + sum_i parts[i, n * P + p, o] << shifts[i] (pixels_first;
    else parts[i, o, n * P + p], and, when ``columns`` is not empty, at out[n, o, columns[p]]:
    a row is summed in cache and permuted on its way out): exact, every part holding
    integers. Pixels-first parts are summed row by row (contiguous reads) into a tile of 32
    pixels, then transposed out of cache.

    A sparse top digit (pixels first only; ``top_ptr`` is empty when there is none): the
    nonzero digits of the input's padded NHWC top plane (N, Hp, Wp, C), by pixel: those of
    pixel q = (n*Hp + y)*Wp + x are top_k[e] (the channel) and top_v[e] (the digit, shifted
    to its weight) for e in top_ptr[q]:top_ptr[q + 1]. ``w_top`` (K, O): the full weights,
    K kernel-major; ``window`` (kh, kw, sh, sw, dh, dw, ow, hp, wp). Each nonzero digit
    under a window adds top_v * w[k, :] to its output pixel: the top digit's GEMM, done on
    its nonzero entries only.
    """
    n_batch, o_total, pixels = out.shape
    if not pixels_first:
        for job in prange(n_batch * o_total):
            b, o = job // o_total, job % o_total
            row = out[b, o] if columns.size == 0 else np.empty(pixels, np.int64)
            for p in range(pixels):
                row[p] = offsets[o]
            for i in range(parts.shape[0]):  # one part at a time: a vectorised pass each
                for p in range(pixels):
                    row[p] += np.int64(parts[i, o, b * pixels + p]) << shifts[i]
            if columns.size:
                for p in range(pixels):
                    out[b, o, columns[p]] = row[p]
        return
    kh, kw, sh, sw, dh, dw, ow, hp, wp = window
    cg = w_top.shape[0] // max(1, kh * kw)
    tile = 32
    p_tiles = (pixels + tile - 1) // tile
    for job in prange(n_batch * p_tiles):
        b = job // p_tiles
        p0 = job % p_tiles * tile
        p1 = min(pixels, p0 + tile)
        buf = np.empty((p1 - p0, o_total), np.int64)
        for p in range(p1 - p0):
            buf[p] = offsets
        for i in range(parts.shape[0]):
            for p in range(p0, p1):
                row = parts[i, b * pixels + p]
                for o in range(o_total):
                    buf[p - p0, o] += np.int64(row[o]) << shifts[i]
        if top_ptr.size:
            for p in range(p0, p1):
                y0, x0 = p // ow * sh, p % ow * sw
                for i in range(kh):
                    for j in range(kw):
                        q = (b * hp + y0 + i * dh) * wp + x0 + j * dw
                        k0 = (i * kw + j) * cg
                        for e in range(top_ptr[q], top_ptr[q + 1]):
                            t, k = top_v[e], k0 + top_k[e]
                            for o in range(o_total):
                                buf[p - p0, o] += t * w_top[k, o]
        for o in range(o_total):
            for p in range(p0, p1):
                out[b, o, p] = buf[p - p0, o]


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
