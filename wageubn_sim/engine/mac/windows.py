"""A layer's input unrolled into the rows of its windows (im2col), in floats for BLAS or as
int8 digits for the int8 GEMM (`WindowMatrix`), per group and chunk of the reduction."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .digits import digit, digit_of_zero, split_digits
from .weights import weight_cache


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
