"""MaxPool2d (selection: exact on any grid) and AvgPool2d / global average pooling
(the window sum, exact, then a rounding division by the divisor onto the output grid)."""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ..fixedpoint.core import OVERFLOWED, TIE, requantize_flagged
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from .divide import divide_scaled
from .registers import Events, Output, check_ints, check_plane

_MIN = np.iinfo(np.int64).min


@dataclasses.dataclass(frozen=True)
class PoolParams:
    kernel: tuple
    stride: tuple
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    # average pooling only:
    out_fmt: Format | None = None  # Q(mean, k): frac k-1, bounded under iostrict
    count_include_pad: bool = True
    divisor_override: int | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM

    def __post_init__(self):
        check_ints("pooling", 1, kernel=self.kernel, stride=self.stride, dilation=self.dilation)
        check_ints("pooling", 0, padding=self.padding)
        if self.divisor_override is not None:
            check_ints("pooling", 1, pair=False, divisor_override=self.divisor_override)


def _geometry(x, p):
    if x.ndim != 4:
        raise ValueError(f"pooling expects an N,C,H,W input, got shape {x.shape}")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"pooling: input {x.shape} does not fit kernel {p.kernel}")
    check_plane("pooling", oh, ow)
    return n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


@njit(cache=True, parallel=True)
def _pool(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, take_max, keep_argmax, out, argmax):
    """Window max (with ``keep_argmax``, the first maximum in (kh, kw) order gives its flat
    input index into argmax) or window sum (of the cells inside the input)."""
    n, c, h, w = x.shape
    for job in prange(n * c):
        b, ch = job // c, job % c
        for y in range(oh):
            for xo in range(ow):
                acc = _MIN if take_max else np.int64(0)
                where = -1
                for i in range(kh):
                    yi = y * sh + i * dh - ph
                    for j in range(kw):
                        xi = xo * sw + j * dw - pw
                        if 0 <= yi < h and 0 <= xi < w:
                            v = x[b, ch, yi, xi]
                            if take_max and keep_argmax:
                                if where < 0 or v > acc:
                                    acc, where = v, yi * w + xi
                            elif take_max:  # the value alone: branch-free
                                acc = max(acc, v)
                            else:
                                acc += v
                out[b, ch, y, xo] = acc
                if take_max and keep_argmax:
                    argmax[b, ch, y, xo] = where


def _cells_inside(size, k, s, pad, d, out_size) -> np.ndarray:
    """Per output position along one axis, how many of its window's taps lie inside the input:
    the taps i with 0 <= y*s - pad + i*d < size, counted in closed form."""
    start = np.arange(out_size, dtype=np.int64) * s - pad
    first = np.maximum(0, -(start // d))  # ceil(-start / d), at least 0
    stop = np.minimum(k, -((start - size) // d))  # ceil((size - start) / d), at most k
    return np.maximum(stop - first, 0)


def max_pool_argmax(x, p: PoolParams, keep_argmax: bool = True):
    """(window maxima, flat input index of each window's first maximum, or None without
    ``keep_argmax``)."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, p)
    out = np.empty((n, c, oh, ow), np.int64)
    argmax = np.empty((n, c, oh, ow) if keep_argmax else (1, 1, 1, 1), np.int64)
    if not (_cells_inside(h, kh, sh, ph, dh, oh).all() and _cells_inside(w, kw, sw, pw, dw, ow).all()):
        raise ValueError(f"max pooling: a window of kernel {p.kernel} with padding {p.padding} "
                         "lies entirely in the padding; reduce the padding")
    _pool(np.ascontiguousarray(x, dtype=np.int64), kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, True,
          keep_argmax, out, argmax)
    return out, argmax if keep_argmax else None


def max_pool2d(x, x_frac, p: PoolParams, trace=False) -> Output:
    out = max_pool_argmax(x, p, keep_argmax=False)[0]
    return Output(out, Format(None, x_frac), Events(), {"output": out} if trace else {},
                  np.zeros(out.shape, np.uint8))


def avg_pool2d(x, x_frac, p: PoolParams, trace=False) -> Output:
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, p)
    sums = np.empty((n, c, oh, ow), np.int64)
    _pool(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, False, False, sums, sums)
    if p.divisor_override:
        divisor = np.full((oh, ow), p.divisor_override, np.int64)
    elif p.count_include_pad:  # torch counts padded cells (inside the padded border)
        divisor = np.full((oh, ow), kh * kw, np.int64)
    else:  # the cells inside the input, from the geometry alone (an empty batch has them too)
        divisor = np.outer(_cells_inside(h, kh, sh, ph, dh, oh), _cells_inside(w, kw, sw, pw, dw, ow))
        if not divisor.all():
            raise ValueError(f"average pooling: a window of kernel {p.kernel} with padding "
                             f"{p.padding} lies entirely in the padding and count_include_pad is "
                             "off, so it has no cells to average; reduce the padding")
    out_frac = p.out_fmt.frac_bits
    q, flags = divide_scaled(sums, divisor[None], out_frac - x_frac, p.rounding)
    events = Events(ties=int(np.count_nonzero(flags & TIE)),
                    underflows=int(np.count_nonzero((q == 0) & (sums != 0))))
    if p.out_fmt.bounded:
        rounded = q
        q, f2 = requantize_flagged(q, out_frac, p.out_fmt, p.rounding, p.overflow)
        events.saturations = int(np.count_nonzero(f2 & OVERFLOWED))
        flags |= f2 & OVERFLOWED
    else:
        rounded = q
    stages = {"sum": sums, "rounded": rounded, "output": q} if trace else {}
    return Output(q, p.out_fmt, events, stages, flags)
