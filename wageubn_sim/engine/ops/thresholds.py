"""Thresholds: a monotone float chain between two integer registers as hardware computes it
(FINN's MultiThreshold; docs/arithmetic.md section 12):

    y[n, c, ...] = first + step * #{l : s_c * x[n, c, ...] >= T[c, l]}

per channel c, with T[c] non-decreasing and s_c = +1 for a chain that does not decrease, -1 for
one that does not increase (a negative scale or gamma). The thresholds are computed exactly when
the chain is imported (`fixedpoint.chains.thresholds`); the comparison itself is exact on any
integers, so the layer has no register to round, wrap or saturate: its levels are its output.
A (1, L) table serves every channel (a per-tensor chain). ``step`` is 1 but for levels that lie
step integers apart: a bipolar (sign) activation's -1, +1 is first = -1, step = 2.

Overflow bound: s_c * x for x in the domain stays in it (-2**61 <= x < 2**61 gives
-2**61 < -x <= 2**61, compared, never stored, in int64).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ...fixedpoint.format import Format
from ..registers import Events, Output, check_channel_input
from ..spec import OpSpec

SIGNS_FORMAT = Format(2, 0)  # the directions: +1 or -1


@dataclasses.dataclass(frozen=True)
class ThresholdsParams:
    """``out_fmt``: the levels' grid and width; ``first``: the lowest level (an integer of
    out_fmt); ``input_frac``: the grid of the input the thresholds were computed for;
    ``step``: the integers from one level to the next (positive)."""

    out_fmt: Format
    first: int
    input_frac: int
    step: int = 1

    def __post_init__(self):
        if not isinstance(self.out_fmt, Format) or not self.out_fmt.bounded:
            raise ValueError(f"thresholds: out_fmt {self.out_fmt!r} must be a bounded format")
        for name in ("first", "input_frac", "step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"thresholds: {name}={value!r} must be an int")
        if not self.out_fmt.min_int <= self.first <= self.out_fmt.max_int:
            raise ValueError(f"thresholds: first={self.first} lies outside out_fmt "
                             f"{self.out_fmt.describe()}")
        if self.step < 1:
            raise ValueError(f"thresholds: step={self.step} must be positive")


@njit(cache=True, inline="always")
def count_reached(row, v):
    """#{l : v >= row[l]} of a non-decreasing row: a binary search, the comparator tree of
    hardware (a level is reached when the value is at or above its threshold)."""
    lo, hi = 0, row.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if v >= row[mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def count_below(row, v):
    """#{l : row[l] < v} of a non-decreasing row."""
    lo, hi = 0, row.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if row[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


MAX_BUCKETS = 1 << 12  # per row: beyond, a row is searched (its thresholds lie too close for a table)
HEADER = 4  # a prepared row: buckets, base, shift, levels; the row; then the bucket tables


def prepared_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of an integer table, prepared once (TFLite's Prepare): (blocks, starts), the
    rows' blocks one after the other and where each starts. A block is [buckets, base, shift,
    levels, row..., counts + 2**32 repeats..., nexts...] (a count and a repeat count are at most
    the levels, below 2**31). With 2**shift at most the smallest gap
    between two distinct thresholds, a bucket [base + b 2**shift, base + (b + 1) 2**shift)
    holds at most one distinct threshold, so a value's count is its bucket's count at the
    bucket's start plus that threshold's repeats if the value reaches it: exact, and without
    a search. A row whose table would exceed MAX_BUCKETS (or of fewer than two thresholds) has
    no buckets (0) and is searched."""
    blocks, starts = [], []
    offset = 0
    for row in np.asarray(table, np.int64):
        levels = row.size
        distinct = np.unique(row)
        gaps = np.diff(distinct)
        buckets, base, shift, tables = 0, 0, 0, []
        if distinct.size >= 2:
            shift = int(gaps.min()).bit_length() - 1
            base = int(row[0])
            buckets = ((int(row[-1]) - base) >> shift) + 2
            if buckets > MAX_BUCKETS:
                buckets, base, shift = 0, 0, 0
            else:
                edges = base + (np.arange(buckets, dtype=np.int64) << shift)
                counts = np.searchsorted(row, edges, side="right")
                nexts = np.where(counts < levels, row[np.minimum(counts, levels - 1)], row[-1])
                repeats = np.where(counts < levels, np.searchsorted(row, nexts, side="right") - counts, 0)
                tables = [counts + (repeats << 32), nexts]  # a count and its repeats in one word
        block = np.concatenate([np.array([buckets, base, shift, levels], np.int64), row, *tables])
        starts.append(offset)
        blocks.append(block.astype(np.int64))
        offset += block.size
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.int64)), np.array(starts, np.int64)


@njit(cache=True)
def levels_into(x, block, sign, first, step, out):
    """out[i] = first + step * the levels sign * x[i] reaches on the prepared row ``block`` (the
    loop the layer path and the plan's step share): its bucket's count, plus the repeats of
    the one threshold the bucket may hold, or a search of the row where it has no buckets."""
    buckets, base, shift, levels = block[0], block[1], block[2], block[3]
    row = block[HEADER:HEADER + levels]
    if buckets == 0:
        for i in range(x.shape[0]):
            out[i] = first + step * count_reached(row, sign * x[i])
        return
    counted = block[HEADER + levels:HEADER + levels + buckets]
    nexts = block[HEADER + levels + buckets:HEADER + levels + 2 * buckets]
    last = buckets - 1
    for i in range(x.shape[0]):
        v = np.int64(sign * x[i])  # an integer (the plan's arena may hold it as a float)
        b = min(max((v - base) >> shift, 0), last)  # |v - base| < 2**62: both in the domain
        word = counted[b]
        k = (word & 0xFFFFFFFF) + (word >> 32) * (v >= nexts[b])
        out[i] = first + step * k * (v >= base)  # below the first threshold: none reached


@njit(cache=True, parallel=True)
def _levels(x, blocks, starts, signs, first, step, out):
    """x (N, C, P) into out: each value's level on its channel's prepared row."""
    n, c, pixels = x.shape
    shared = starts.shape[0] == 1
    for job in prange(n * c):
        b, ch = job // c, job % c
        k = 0 if shared else ch
        levels_into(x[b, ch], blocks[starts[k]:], signs[k], first, step, out[b, ch])


@njit(cache=True)
def float_levels_into(x, row, sign, first, step, out):
    """Float values (an input's own quantization) against float64 thresholds: the count is
    guessed from the row's interior (an input chain is affine: its thresholds evenly spaced
    between the clamped ends) and checked against the two thresholds around it; a wrong guess
    falls back to the search. The result is `count_reached` either way."""
    n = row.shape[0]
    if n == 0:
        out[:] = first
        return
    start, stop = 0, 0
    if n >= 4:
        start = count_reached(row, row[0])  # past the thresholds equal to the first
        stop = count_below(row, row[n - 1])  # before those equal to the last
    interior = stop - 1 > start and row[stop - 1] > row[start] and \
        np.isfinite(row[start]) and np.isfinite(row[stop - 1])
    anchor = row[start] if interior else 0.0
    inverse = (stop - 1 - start) / (row[stop - 1] - row[start]) if interior else 0.0
    for i in range(x.shape[0]):
        v = sign * x[i]
        guess = min(max((v - anchor) * inverse, -2.0), n + 1.0)  # clamped before the conversion
        k = min(max(start + 1 + int(guess), 0), n)
        below, above = row[max(k - 1, 0)], row[min(k, n - 1)]
        if not (((k == 0) | (v >= below)) & ((k == n) | (v < above))):
            k = count_reached(row, v)
        out[i] = first + step * k


@njit(cache=True, parallel=True)
def _float_levels(x, table, signs, first, step, out):
    n, c, pixels = x.shape
    shared = table.shape[0] == 1
    for job in prange(n * c):
        b, ch = job // c, job % c
        k = 0 if shared else ch
        float_levels_into(x[b, ch], table[k], signs[k], first, step, out[b, ch])


def count_levels(x: np.ndarray, table: np.ndarray, signs: np.ndarray, first: int,
                 step: int = 1) -> np.ndarray:
    """first + step * the levels each value of x (N, C, ...: integers, or the floats of an input's own
    quantization against float thresholds) reaches on its channel's row of ``table`` (one row:
    every channel's)."""
    n, c = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(n, c, int(np.prod(x.shape[2:], dtype=np.int64)))
    out = np.empty(x3.shape, np.int64)
    signs = np.ascontiguousarray(signs, dtype=np.int64)
    if table.dtype.kind == "f":
        _float_levels(x3, np.ascontiguousarray(table), signs, first, step, out)
    else:
        _levels(x3, *prepared_rows(table), signs, first, step, out)
    return out.reshape(x.shape)


def thresholds(x: np.ndarray, x_frac: int, table: np.ndarray, signs: np.ndarray,
               p: ThresholdsParams, trace: bool = False) -> Output:
    check_channel_input("thresholds", x, x_frac, p.input_frac, "thresholds")
    channels, levels = table.shape
    if channels not in (1, x.shape[1]) or signs.shape != (channels,):
        raise ValueError(f"thresholds: a table of {channels} rows and {signs.shape} signs for an "
                         f"input of {x.shape[1]} channels")
    if levels and bool(np.any(np.diff(table, axis=1) < 0)):
        raise ValueError("thresholds: each channel's thresholds must not decrease")
    if not bool(np.all(np.abs(signs) == 1)):
        raise ValueError("thresholds: each sign is +1 or -1")
    if p.first + p.step * levels > p.out_fmt.max_int:
        raise ValueError(f"thresholds: {levels} levels above {p.first} leave out_fmt "
                         f"{p.out_fmt.describe()}")
    q = count_levels(np.asarray(x, np.int64), np.asarray(table, np.int64), signs, p.first, p.step)
    return Output(q, p.out_fmt, Events(), {"input": x, "output": q} if trace else {},
                  np.zeros(q.shape, np.uint8))


def clamped_to_range(table: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The table clamped to +-(max(|lo|, |hi|) + 1): the same levels for every input in [lo, hi]
    (a threshold beyond the bound is reached by all of them, or by none), and the one canonical
    table of a layer whose input range is known (the plan, the export, the import)."""
    bound = max(-int(lo), int(hi)) + 1
    return np.clip(table, -bound, bound)


def thresholds_range(p: ThresholdsParams, arrays, ins):
    """The levels the input range can reach, per channel at its two ends (monotone)."""
    (lo, hi), _ = ins[0]
    table, signs = arrays["thresholds"], arrays["signs"]
    counts = [int(np.count_nonzero(s * v >= row)) for row, s in zip(table, signs) for v in (lo, hi)]
    return p.first + p.step * min(counts), p.first + p.step * max(counts), p.out_fmt.frac_bits


SPECS = (OpSpec("thresholds", ThresholdsParams,
                lambda p, a, ins, t: thresholds(*ins[0], a["thresholds"], a["signs"], p, t),
                thresholds_range,
                arrays=lambda p: {"thresholds": Format(None, p.input_frac), "signs": SIGNS_FORMAT},
                array_ranks={"thresholds": 2, "signs": 1}, planned=True),)
