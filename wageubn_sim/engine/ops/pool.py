"""MaxPool2d (selection: exact on any grid) and AvgPool2d / global average pooling
(the window sum, exact, then a rounding division by the divisor onto the output grid)."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import requantize_flagged
from ...fixedpoint.format import FixedArray, Format
from ...fixedpoint.modes import Overflow, Rounding
from ...fixedpoint.scalar import OVERFLOWED, TIE
from ..divide import divide_scaled
from ..geometry import cells_inside, check_plane, output_size
from ..ranges import same_range
from ..registers import Events, Output, check_ints
from ..spec import OpSpec

_MIN = np.iinfo(np.int64).min


# The fields of PoolParams that only average pooling reads
AVERAGE_ONLY = ("out_fmt", "count_include_pad", "divisor_override", "rounding", "overflow")


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
    oh, ow = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
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


def max_pool_argmax(x, p: PoolParams, keep_argmax: bool = True):
    """(window maxima, flat input index of each window's first maximum, or None without
    ``keep_argmax``)."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, p)
    out = np.empty((n, c, oh, ow), np.int64)
    argmax = np.empty((n, c, oh, ow) if keep_argmax else (1, 1, 1, 1), np.int64)
    if not (cells_inside(h, kh, sh, ph, dh, oh).all() and cells_inside(w, kw, sw, pw, dw, ow).all()):
        raise ValueError(f"max pooling: a window of kernel {p.kernel} with padding {p.padding} "
                         "lies entirely in the padding; reduce the padding")
    _pool(np.ascontiguousarray(x, dtype=np.int64), kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, True,
          keep_argmax, out, argmax)
    return out, argmax if keep_argmax else None


MAX_WINDOW_CELLS = 1 << 22  # a table of every window's cells (32 MiB); beyond, window by window


@functools.lru_cache(maxsize=64)
def window_cells(h: int, w: int, p: PoolParams, oh: int, ow: int) -> np.ndarray:
    """Each window's cells as offsets in its (h, w) channel plane, kernel cell by kernel cell:
    (kh * kw, oh * ow), read-only (kept for the next call of the same geometry). A row or
    column of a window in the padding is replaced by the window's first one inside, so that
    every cell read lies inside the window and a repeated cell leaves the maximum as it is.
    ValueError for a window wholly in the padding."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    inside = []
    for size, k, s, pad, d, out in ((h, kh, sh, ph, dh, oh), (w, kw, sw, pw, dw, ow)):
        at = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d - pad  # (out, k)
        valid = (at >= 0) & (at < size)
        if not valid.any(axis=1).all():
            raise ValueError(f"max pooling: a window of kernel {p.kernel} with padding {p.padding} "
                             "lies entirely in the padding; reduce the padding")
        first = at[np.arange(out), valid.argmax(axis=1)]
        inside.append(np.where(valid, at, first[:, None]))
    rows, cols = inside  # (oh, kh), (ow, kw)
    cells = (rows.T[:, None, :, None] * w + cols.T[None, :, None, :]).reshape(kh * kw, oh * ow).astype(np.int64)
    cells.flags.writeable = False
    return cells


@njit(cache=True, inline="always")
def max_over_cells(channel, table, out):
    """out[q] = the maximum of channel at the cells table[:, q] (`window_cells`, flattened):
    cell by cell over all the windows of a channel (a loop over one window's few cells, with
    its bounds, costs 4x more). The one max-pool loop: the layer path runs it per channel, the
    execution plan per channel of one image."""
    windows = out.shape[0]
    cells = table.shape[0] // windows
    first = table[:windows]
    for q in range(windows):
        out[q] = channel[first[q]]
    for k in range(1, cells):
        cell = table[k * windows:(k + 1) * windows]
        for q in range(windows):
            out[q] = max(out[q], channel[cell[q]])


@njit(cache=True, parallel=True)
def _max_pool_planes(x, table, out):
    """`max_over_cells` of every (n, c) plane: x (N*C, H*W), out (N*C, OH*OW)."""
    for job in prange(x.shape[0]):
        max_over_cells(x[job], table, out[job])


def max_pool2d(x, x_frac, p: PoolParams, trace=False) -> Output:
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, p)
    if kh * kw * oh * ow <= MAX_WINDOW_CELLS:
        table = window_cells(h, w, p, oh, ow).reshape(-1)
        out = np.empty((n, c, oh, ow), np.int64)
        _max_pool_planes(np.ascontiguousarray(x, dtype=np.int64).reshape(n * c, h * w), table,
                         out.reshape(n * c, oh * ow))
    else:
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
        divisor = np.outer(cells_inside(h, kh, sh, ph, dh, oh), cells_inside(w, kw, sw, pw, dw, ow))
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


# ---- backward --------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _scatter_add(error, argmax, out):
    """out[n, c].flat[argmax[n, c, y, x]] += error[n, c, y, x], per (n, c) plane."""
    n, c = error.shape[:2]
    for job in prange(n * c):
        b, ch = job // c, job % c
        plane = out[b, ch].reshape(-1)
        for y in range(error.shape[2]):
            for x in range(error.shape[3]):
                if argmax[b, ch, y, x] >= 0:  # a window wholly in the padding reads nothing
                    plane[argmax[b, ch, y, x]] += error[b, ch, y, x]


def max_pool2d_backward(x: np.ndarray, error: np.ndarray, p: PoolParams) -> np.ndarray:
    """Each window's error to the window's first maximum (the forward's argmax)."""
    _, argmax = max_pool_argmax(x, p)
    if argmax.shape != error.shape:
        raise ValueError(f"max-pool backward: error {error.shape} != output {argmax.shape}")
    out = np.zeros(x.shape, np.int64)
    _scatter_add(np.ascontiguousarray(error, dtype=np.int64), argmax, out)
    return out


@njit(cache=True, parallel=True)
def _spread(error, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """out[window cells] += error of the window, per (n, c) plane."""
    n, c, h, w = out.shape
    for job in prange(n * c):
        b, ch = job // c, job % c
        for y in range(error.shape[2]):
            for x in range(error.shape[3]):
                for i in range(kh):
                    yi = y * sh + i * dh - ph
                    for j in range(kw):
                        xi = x * sw + j * dw - pw
                        if 0 <= yi < h and 0 <= xi < w:
                            out[b, ch, yi, xi] += error[b, ch, y, x]


def avg_pool2d_backward(x_shape: tuple, error: np.ndarray, error_frac: int, p: PoolParams):
    """Each window's error divided by the divisor, onto every cell of the window. Defined for
    power-of-two divisors only, where the division is exact: the result is the spread error
    on the grid 2**-(error_frac + log2(divisor)). (With other divisors the official float
    division has no exact integer form; see docs §10.)"""
    kh, kw = p.kernel
    divisor = p.divisor_override or kh * kw
    if not p.count_include_pad and any(p.padding):
        raise ValueError("average-pooling backward: count_include_pad=False with padding has "
                         "per-window divisors; not defined for integer training")
    if divisor & (divisor - 1):
        raise ValueError(f"average-pooling backward: divisor {divisor} is not a power of two; "
                         "integer training defines only exact divisions")
    out = np.zeros(x_shape, np.int64)
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    _spread(np.ascontiguousarray(error, dtype=np.int64), kh, kw, sh, sw, ph, pw, dh, dw, out)
    return out, error_frac + divisor.bit_length() - 1


# ---- the specs --------------------------------------------------------------------------------

def average_range(p: PoolParams, arrays, ins):
    (lo, hi), frac = ins[0]
    return min(lo, 0), max(hi, 0), frac  # padded cells count as zeros


def check_max(p: PoolParams) -> None:
    """A max pool leaves the fields only averaging reads at their defaults."""
    defaults = PoolParams(p.kernel, p.stride)
    averaging = [f for f in AVERAGE_ONLY if getattr(p, f) != getattr(defaults, f)]
    if averaging:
        raise ValueError(f"a max pool sets {averaging}, which only average pooling reads")


def check_average(p: PoolParams) -> None:
    if p.out_fmt is None:
        raise ValueError("an average pool needs out_fmt, the grid of its rounded mean")


def _max_backward(p, arrays, ins, out, error):
    return [FixedArray(max_pool2d_backward(ins[0][0], error.q, p), error.frac_bits)], {}


def _average_backward(p, arrays, ins, out, error):
    dx, frac = avg_pool2d_backward(ins[0][0].shape, error.q, error.frac_bits, p)
    return [FixedArray(dx, frac)], {}


SPECS = (
    OpSpec("max_pool2d", PoolParams, lambda p, a, ins, t: max_pool2d(*ins[0], p, t), same_range,
           check=check_max, planned=True, backward=_max_backward),
    OpSpec("avg_pool2d", PoolParams, lambda p, a, ins, t: avg_pool2d(*ins[0], p, t), average_range,
           check=check_average, output_fields=("out_fmt", "rounding", "overflow"),
           backward=_average_backward),
)
