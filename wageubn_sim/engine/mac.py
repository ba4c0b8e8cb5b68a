"""The multiply-accumulate core shared by Conv2d, Linear and Adder2d.

Two ways to the same sums:

* `exact_matmul`: when the accumulator cannot overflow (exact, or WRAP, which is the exact sum
  mod 2**bits in any order, or SAT with a bound that never reaches the rails), any exact
  method will do: an int8 GEMM on base-256 digits of both operands (int32 sums, exact in
  chunks of 131071 MACs), or BLAS in float32/float64 on chunks of the reduction small enough
  that *every* partial sum is an integer the float type holds exactly, whatever order the
  library adds in. Parts are added in int64, so results do not depend on the library, its
  blocking or the thread count.
* `narrow_mac_loop`: a saturating accumulator that can reach its rails depends on the MAC
  order, so the loop nest runs in hardware order, one MAC at a time per output element,
  with the accumulator's rule applied after every addition.
"""
from __future__ import annotations

import os
import threading
import weakref

import numba
import numpy as np
from numba import njit, prange

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53

OP_MULTIPLY = 0  # acc += x * w
OP_ADDER = 1  # acc += -|x - w| (AdderNet)

# Float arithmetic on integers below 2**24 (float32) or 2**53 (float64) is exact, so LLVM may
# reorder and fuse it freely (what lets it vectorise the event counts); NaN/Inf never occur.
_EXACT_FAST = {"reassoc", "contract", "nnan", "ninf", "nsz"}


@njit(cache=True, parallel=True)
def im2col(x, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad, out):
    """out[(c, i, j), (n, y, x)] = x[n, c0 + c, y*sh + i*dh - ph, x*sw + j*dw - pw], ``pad``
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
                        out[row, col + xo] = pad
                    continue
                src = x[b, c0 + c, yi]
                dst = out[row, col:col + ow]
                for xo in range(min(x_lo, ow)):
                    dst[xo] = pad
                if sw == 1:  # contiguous: a vectorizable copy
                    off = j * dw - pw
                    if x_hi > x_lo:
                        dst[x_lo:x_hi] = src[x_lo + off:x_hi + off]
                else:
                    for xo in range(x_lo, x_hi):
                        dst[xo] = src[xo * sw + j * dw - pw]
                for xo in range(max(x_hi, x_lo), ow):
                    dst[xo] = pad


@njit(cache=True, parallel=True)
def _padded_nhwc_digits(x, c0, c1, ph, pw, origin, out):
    """out[d, n, ph + y, pw + x, c] = digit d of x[n, c0 + c, y, x] (`digit` from ``origin``),
    and the border the digits of 0."""
    count, n, hp, wp, cg = out.shape
    h, w = x.shape[2], x.shape[3]
    for job in prange(n * hp):
        b, yp = job // hp, job % hp
        y = yp - ph
        inside = 0 <= y < h
        for d in range(count):
            pad = digit(np.int64(0), d, origin)
            if inside:
                out[d, b, yp, :pw] = pad
                out[d, b, yp, pw + w:] = pad
            else:
                out[d, b, yp] = pad
        if not inside:
            continue
        for c in range(cg):
            for col in range(w):
                v = np.int64(x[b, c0 + c, y, col])
                for d in range(count):
                    out[d, b, yp, pw + col, c] = digit(v, d, origin)


@njit(cache=True, parallel=True)
def _im2row_nhwc(xp, kh, kw, sh, sw, dh, dw, oh, ow, out):
    """out[(n, y, x), (i, j, c)] = xp[n, y*sh + i*dh, x*sw + j*dw, c] (xp padded, NHWC, seen
    as (N, Hp, Wp*C)): a window row (fixed i) is one contiguous run of kw*C values when dw = 1,
    else kw runs of C."""
    n = xp.shape[0]
    c = out.shape[1] // (kh * kw)
    for r in prange(n * oh):
        b, y = r // oh, r % oh
        for x in range(ow):
            m = r * ow + x
            for i in range(kh):
                src = xp[b, y * sh + i * dh]
                k0 = i * kw * c
                if dw == 1:
                    s0 = x * sw * c
                    out[m, k0:k0 + kw * c] = src[s0:s0 + kw * c]
                else:
                    for j in range(kw):
                        s0 = (x * sw + j * dw) * c
                        out[m, k0 + j * c:k0 + (j + 1) * c] = src[s0:s0 + c]


class WindowMatrix:
    """The (K, N*OH*OW) window matrix of channels c0..c1 of x, built on demand for
    `exact_matmul`'s ``cols_source``: called with a dtype, it unrolls the windows in it
    (K in channel-major order, (c, i, j)). For the int8 GEMM, ``digit_rows(count)`` gives
    each int8 digit of x as the transposed (N*OH*OW, K) matrix in kernel-major order
    (i, j, c), built from a padded NHWC copy: ``kernel_major`` maps its columns to K."""

    def __init__(self, x, c0: int, c1: int, kernel, stride, padding, dilation, out_size):
        self.x, self.c0, self.c1 = x, c0, c1
        self._memo: dict = {}  # digit planes and rows of this instance
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.dilation, self.out_size = dilation, out_size
        cg, (kh, kw) = c1 - c0, kernel
        self.kernel_major = np.arange(cg * kh * kw).reshape(cg, kh, kw).transpose(1, 2, 0).ravel()

    def to_kernel_major(self, a: np.ndarray) -> np.ndarray:
        """``a`` (..., K) with K channel-major (c, i, j) -> K kernel-major (i, j, c), contiguous:
        the same permutation as indexing with ``kernel_major``, by a transpose (a gather is
        several times slower on a large weight)."""
        cg, (kh, kw) = self.c1 - self.c0, self.kernel
        lead = a.shape[:-1]
        return np.ascontiguousarray(a.reshape(*lead, cg, kh * kw).swapaxes(-1, -2)).reshape(*lead, -1)

    def __call__(self, dtype):
        (kh, kw), (oh, ow) = self.kernel, self.out_size
        out = np.empty(((self.c1 - self.c0) * kh * kw, self.x.shape[0] * oh * ow), dtype=dtype)
        im2col(self.x, self.c0, self.c1, kh, kw, *self.stride, *self.padding, *self.dilation,
               oh, ow, 0, out)
        return out

    @property
    def prefers_rows(self) -> bool:
        """Rows copy runs of kw*C (or C, when dilated) values: worth it from 16 on (measured:
        a 7x7 stem on 3 channels, runs of 21, 1.6x faster as rows); shorter runs unroll
        faster channel-major, as columns (a 3x3 on 3 channels about even, 5x5 on 1 channel
        2x faster as columns)."""
        cg, kw = self.c1 - self.c0, self.kernel[1]
        return (cg * kw if self.dilation[1] == 1 else cg) >= 16

    def digit_cols(self, count: int, origin: int) -> list:
        """Each int8 digit of x (`split_digits`) unrolled as the (K, N*OH*OW) window matrix
        (K channel-major), the padding holding the digits of 0."""
        digits = split_digits(self.x[:, self.c0:self.c1], count, origin)
        (kh, kw), (oh, ow) = self.kernel, self.out_size
        cols = []
        for d, plane in enumerate(digits):
            out = np.empty(((self.c1 - self.c0) * kh * kw, plane.shape[0] * oh * ow), np.int8)
            im2col(plane, 0, self.c1 - self.c0, kh, kw, *self.stride, *self.padding,
                   *self.dilation, oh, ow, digit_of_zero(d, origin), out)
            cols.append(out)
        return cols

    def digit_planes(self, count: int, origin: int) -> np.ndarray:
        """Each int8 digit of x as a padded NHWC plane, (D, N, H + 2ph, W + 2pw, C); kept with
        a read-only x (`weight_cache`)."""
        cache = weight_cache(self.x) or self._memo  # this call's own, when x may change
        key = ("planes", self.c0, self.c1, self.padding, count, origin)
        if key not in cache:
            n, _, h, w = self.x.shape
            ph, pw = self.padding
            planes = np.empty((count, n, h + 2 * ph, w + 2 * pw, self.c1 - self.c0), np.int8)
            _padded_nhwc_digits(self.x, self.c0, self.c1, ph, pw, origin, planes)
            cache[key] = planes
        return cache[key]

    def digit_rows(self, digit: int, count: int, origin: int) -> np.ndarray:
        """Digit ``digit`` of ``count`` unrolled as the (N*OH*OW, K) matrix, K kernel-major
        (`rows` of its plane); kept with a read-only x, so that a training step's weight
        gradient reuses what its forward unrolled."""
        cache = weight_cache(self.x) or self._memo
        key = ("rows", self.c0, self.c1, self.kernel, self.stride, self.padding, self.dilation,
               self.out_size, count, origin, digit)
        if key not in cache:
            cache[key] = self.rows(self.digit_planes(count, origin)[digit])
        return cache[key]

    def rows(self, plane: np.ndarray) -> np.ndarray:
        """One digit plane unrolled as the (N*OH*OW, K) matrix, K kernel-major."""
        n, hp = plane.shape[:2]
        (kh, kw), (oh, ow) = self.kernel, self.out_size
        out = np.empty((n * oh * ow, kh * kw * (self.c1 - self.c0)), np.int8)
        _im2row_nhwc(plane.reshape(n, hp, -1), kh, kw, *self.stride, *self.dilation, oh, ow, out)
        return out


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


INT32_EXACT = 1 << 31
# Operands wider than int8 are cut into base-256 digits, each stored as an int8, so each digit
# pair is one int8 GEMM; x (D_x digits) times w (D_w) costs D_x * D_w GEMMs. Digits are taken
# of v - origin (non-negative for every v in range), each minus 128:
#     v = origin + 128 * R_D + sum_d s_d * 256**d,   R_D = sum_{d<D} 256**d,  s_d in -128..127.
# Weights use origin = -128 * R_D (balanced digits: v = sum_d s_d * 256**d, nothing to add
# back). The unrolled input may take any origin, since the constant c = origin + 128 * R_D it
# leaves adds c * sum_k w[o, k] to output o, added back exactly: an input in 0..255 (a ReLU's
# byte) is one digit.
DIGIT_BITS = 8
MAX_DIGIT_GEMMS = 6  # beyond, BLAS in floats is faster
DIGIT_CHUNK = (INT32_EXACT - 1) // (128 * 128)  # reduction length whose int32 sums are exact


def _repunit(count: int) -> int:
    """R_D = sum_{d<D} 256**d."""
    return ((1 << (DIGIT_BITS * count)) - 1) // 255


def balanced_digits(lo: int, hi: int) -> tuple[int, int]:
    """(D, origin) of the fewest balanced digits that hold every value in [lo, hi]:
    D digits hold -128 * R_D .. 127 * R_D."""
    count = 1
    while lo < -128 * _repunit(count) or hi > 127 * _repunit(count):
        count += 1
    return count, -128 * _repunit(count)


def offset_digits(lo: int, hi: int) -> tuple[int, int]:
    """(D, origin) of the fewest digits for the values in [lo, hi] and 0 (the padding): v - lo
    must be below 256**D. When it stays below half of that, the origin is lowered so that the
    top digit is (v - lo) >> 8(D - 1), zero for the values near lo (when it is mostly zero,
    `_int8_parts` adds its products entry by entry instead of by a GEMM)."""
    lo, hi = min(lo, 0), max(hi, 0)
    count = 1
    while hi - lo >= 1 << (DIGIT_BITS * count):
        count += 1
    top = 1 << (DIGIT_BITS * (count - 1))
    return count, (lo - 128 * top if hi - lo < 128 * top else lo)


def digit_offset(count: int, origin: int) -> int:
    """The constant c = origin + 128 * R_D that ``count`` digits from ``origin`` leave out."""
    return origin + 128 * _repunit(count)


@njit(cache=True, inline="always")
def digit(v, d, origin):
    """Digit d of v from ``origin``, as stored: byte d of v - origin, minus 128."""
    return np.int8((((v - origin) >> (DIGIT_BITS * d)) & 255) - 128)


def digit_of_zero(d: int, origin: int) -> int:
    """Digit d of 0 (what padding holds)."""
    return (((-origin) >> (DIGIT_BITS * d)) & 255) - 128


@njit(cache=True, parallel=True)
def _split_digits(flat, origin, out):
    for i in prange(flat.size):
        for d in range(out.shape[0]):
            out[d, i] = digit(np.int64(flat[i]), d, origin)


def split_digits(a: np.ndarray, count: int, origin: int) -> np.ndarray:
    """Integers a as (count, *a.shape) int8 digits from ``origin``:
    a = origin + 128 * R_D + sum_d out[d] * 256**d."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty((count, flat.size), np.int8)
    _split_digits(flat, origin, out)
    return out.reshape((count,) + a.shape)


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


# One MAC into accumulator value v, overflow applied: (new v, 1 if the overflow rule acted).
# m is 0 for a padding tap (blocks are filled to four taps) and adds nothing. The loop names
# one of these by a literal int (`mac_term`), so that the JIT compiles one branch-free kernel
# per kind, and the disk cache keeps them (a function passed as an argument is never cached).
@njit(inline="always", fastmath=_EXACT_FAST)
def multiply_saturate(v, x, w, m, lo, hi, span):
    total = v + x * w
    fitted = min(max(total, lo), hi)
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype


@njit(inline="always", fastmath=_EXACT_FAST)
def multiply_wrap(v, x, w, m, lo, hi, span):
    total = v + x * w
    fitted = lo + (total - lo) % span
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype


@njit(inline="always", fastmath=_EXACT_FAST)
def adder_saturate(v, x, w, m, lo, hi, span):
    total = v - abs(x - w) * m
    fitted = min(max(total, lo), hi)
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype


@njit(inline="always", fastmath=_EXACT_FAST)
def adder_wrap(v, x, w, m, lo, hi, span):
    total = v - abs(x - w) * m
    fitted = lo + (total - lo) % span
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype


MULTIPLY_SATURATE, MULTIPLY_WRAP, ADDER_SATURATE, ADDER_WRAP = 0, 1, 2, 3
MAC_TERMS = {(OP_MULTIPLY, False): MULTIPLY_SATURATE, (OP_MULTIPLY, True): MULTIPLY_WRAP,
             (OP_ADDER, False): ADDER_SATURATE, (OP_ADDER, True): ADDER_WRAP}


@njit(inline="always", fastmath=_EXACT_FAST)
def mac_step(term, v, x, w, m, lo, hi, span):
    """The MAC of kind ``term`` (a literal: the other branches are pruned at compile time)."""
    if term == MULTIPLY_SATURATE:
        return multiply_saturate(v, x, w, m, lo, hi, span)
    if term == MULTIPLY_WRAP:
        return multiply_wrap(v, x, w, m, lo, hi, span)
    if term == ADDER_SATURATE:
        return adder_saturate(v, x, w, m, lo, hi, span)
    return adder_wrap(v, x, w, m, lo, hi, span)


@njit(cache=True)
def narrow_mac_loop(planes, pitch, oh, ow, tap_plane, tap_offset, w_taps, bias, groups,
                    mac_term, merge_term, lo, hi, span, k_split, out, acc_events):
    """`_narrow_mac_loop`, its terms (MAC_TERMS values) made compile-time constants."""
    _narrow_mac_loop(planes, pitch, oh, ow, tap_plane, tap_offset, w_taps, bias, groups,
                     numba.literally(mac_term), numba.literally(merge_term), lo, hi, span,
                     k_split, out, acc_events)


@njit(cache=True, parallel=True, fastmath=_EXACT_FAST)
def _narrow_mac_loop(planes, pitch, oh, ow, tap_plane, tap_offset, w_taps, bias, groups,
                     mac_term, merge_term, lo, hi, span, k_split, out, acc_events):
    """One accumulator per output element, MACs in hardware order, overflow after each add.

    planes (N, C*S, L): the padded input split into S = sh*sw stride phases, each phase a flat
    plane at row pitch ``pitch``, so a tap of any stride and dilation is one contiguous run:
    output p = y*pitch + x reads planes[n, c*S + tap_plane[t], tap_offset[t] + p] (columns
    x >= ow are computed on neighbouring data and dropped). w_taps (O, K): weights in MAC
    order (products already shifted to the accumulator's grid). ``bias`` (O,) preloads the
    first partial sum. ``mac_term`` is one of MAC_TERMS' values; ``merge_term``
    (MULTIPLY_SATURATE or MULTIPLY_WRAP) adds the k_split partial sums. Every value is exact in the arrays' dtype
    (float32 only when the caller proved |every sum| < 2**24, else int64). acc_events[n, o]
    counts the additions that wrapped or saturated, over real columns only.

    Loop nest: a job is one image and four output channels of a group; per block of four
    taps, each channel runs once over the same four input runs (in cache) with its
    accumulator held in a register across the four taps (still one add and one overflow per
    MAC, in order).
    """
    n_batch = planes.shape[0]
    o_total, k_total = w_taps.shape
    og = o_total // groups
    blocks = (og + 3) // 4  # per group
    chunk = (k_total + k_split - 1) // k_split
    plane = oh * pitch
    real = np.zeros(plane, planes.dtype)  # 1 on the columns that are outputs
    for y in range(oh):
        real[y * pitch:y * pitch + ow] = 1
    zero = lo - lo  # 0 in the arrays' dtype
    group_planes = planes.shape[1] // groups
    for job in prange(n_batch * groups * blocks):
        b = job // (groups * blocks)
        g = (job // blocks) % groups
        o0 = g * og + (job % blocks) * 4
        rows = np.empty(4, np.int64)  # the block's output channels, the last repeated
        for q in range(4):
            rows[q] = min(o0 + q, g * og + og - 1)
        acc = np.empty((4, k_split, plane), planes.dtype)
        for q in range(4):
            for s in range(k_split):
                acc[q, s] = bias[rows[q]] if s == 0 else 0
        events = np.zeros(4, np.int64)
        src = np.empty(4, np.int64)
        off = np.empty(4, np.int64)
        wt = np.empty((4, 4), planes.dtype)
        mask = np.empty(4, planes.dtype)
        for s in range(k_split):
            t_end = min(k_total, (s + 1) * chunk)
            for t0 in range(s * chunk, t_end, 4):
                for u in range(4):  # pad the block with weight-0, mask-0 taps
                    t = min(t0 + u, t_end - 1)
                    src[u] = g * group_planes + tap_plane[t]
                    off[u] = tap_offset[t]
                    mask[u] = 1 if t0 + u < t_end else 0
                    for q in range(4):
                        wt[q, u] = w_taps[rows[q], t] * mask[u]
                x0 = planes[b, src[0], off[0]:off[0] + plane]
                x1 = planes[b, src[1], off[1]:off[1] + plane]
                x2 = planes[b, src[2], off[2]:off[2] + plane]
                x3 = planes[b, src[3], off[3]:off[3] + plane]
                m0, m1, m2, m3 = mask[0], mask[1], mask[2], mask[3]
                for q in range(4):
                    w0, w1, w2, w3 = wt[q, 0], wt[q, 1], wt[q, 2], wt[q, 3]
                    a = acc[q, s]
                    acted = zero
                    for p in range(plane):
                        v, e0 = mac_step(mac_term, a[p], x0[p], w0, m0, lo, hi, span)
                        v, e1 = mac_step(mac_term, v, x1[p], w1, m1, lo, hi, span)
                        v, e2 = mac_step(mac_term, v, x2[p], w2, m2, lo, hi, span)
                        v, e3 = mac_step(mac_term, v, x3[p], w3, m3, lo, hi, span)
                        a[p] = v
                        acted += (e0 + e1 + e2 + e3) * real[p]
                    events[q] += np.int64(acted)
        for q in range(min(4, g * og + og - o0)):
            for s in range(1, k_split):  # partial sums added in order into the first
                for y in range(oh):
                    for x in range(ow):
                        p = y * pitch + x
                        v, e = mac_step(merge_term, acc[q, 0, p], acc[q, s, p], 1, 1, lo, hi, span)
                        acc[q, 0, p] = v
                        events[q] += e
            for y in range(oh):
                for x in range(ow):
                    out[b, o0 + q, y, x] = np.int64(acc[q, 0, y * pitch + x])
            acc_events[b, o0 + q] = events[q]


@njit(cache=True)
def fill_stride_phases(x, ph, pw, sh, sw, pitch, out):
    """One channel: out[r*sw + s, (Y//sh)*pitch + X//sw] = x[Y - ph, X - pw] for the padded
    coordinates Y = r (mod sh), X = s (mod sw); the rest of ``out`` is left as it is (zero).
    Phase by phase, so the divisions are per row, not per value (a divide per value was most
    of a small conv's time), and with sw = 1 each row is a contiguous copy."""
    h, w = x.shape
    for r in range(sh):
        first_row = max(0, -(-(ph - r) // sh))  # the first padded row Y = r + sh*a inside x
        for s in range(sw):
            first_col = max(0, -(-(pw - s) // sw))
            col = s + sw * first_col - pw  # x's first column in this phase
            count = max(0, -(-(w - col) // sw))
            plane = out[r * sw + s]
            a = first_row
            y = r + sh * a - ph
            while y < h:
                row, source = plane[a * pitch + first_col:a * pitch + first_col + count], x[y, col:]
                if sw == 1:  # contiguous: it vectorizes
                    for j in range(count):
                        row[j] = source[j]
                else:
                    for j in range(count):
                        row[j] = source[j * sw]
                a += 1
                y += sh


@njit(cache=True, parallel=True)
def _fill_stride_phases(x, ph, pw, sh, sw, pitch, out):
    """`fill_stride_phases` of every channel of every image, in parallel."""
    n, c = x.shape[:2]
    phases = sh * sw
    for job in prange(n * c):
        b, ch = job // c, job % c
        fill_stride_phases(x[b, ch], ph, pw, sh, sw, pitch, out[b, ch * phases:(ch + 1) * phases])


def stride_phase_geometry(h, w, padding, stride) -> tuple:
    """(rows, pitch) of a stride phase plane of an h x w input: the padded input's rows and
    columns per phase, Hq = ceil(Hp/sh) and Wq = ceil(Wp/sw). A plane holds (Hq + 1) * Wq
    values: one zero row more, so that a tap's run may pass the last row's end."""
    (ph, pw), (sh, sw) = padding, stride
    return -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)


def stride_phase_planes(x, padding, stride, dtype):
    """The input x (N, C, H, W), zero-padded, as (N, C*sh*sw, (Hq+1)*Wq) stride phases: plane
    c*sh*sw + r*sw + s holds the padded x[:, c, r::sh, s::sw] flat at pitch Wq = ceil(Wp/sw)
    (`stride_phase_geometry`). Returns (planes, Wq)."""
    (ph, pw), (sh, sw) = padding, stride
    n, c, h, w = x.shape
    hq, wq = stride_phase_geometry(h, w, padding, stride)
    planes = np.zeros((n, c * sh * sw, (hq + 1) * wq), dtype)
    _fill_stride_phases(x, ph, pw, sh, sw, wq, planes)
    return planes, wq


def mac_taps(cg, kh, kw, sh, sw, dh, dw, pitch, kernel_major):
    """For each MAC t in hardware order: its (c, i, j), the stride-phase plane it reads
    (channel c's phase ((i*dh) % sh, (j*dw) % sw)) and its offset in that plane."""
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    if kernel_major:  # t = (i, j, c)
        c, i, j = (a.transpose(1, 2, 0) for a in (c, i, j))
    c, i, j = c.ravel(), i.ravel(), j.ravel()
    plane = c * (sh * sw) + (i * dh) % sh * sw + (j * dw) % sw
    offset = (i * dh) // sh * pitch + (j * dw) // sw
    return np.stack([c, i, j], axis=1), plane, offset
