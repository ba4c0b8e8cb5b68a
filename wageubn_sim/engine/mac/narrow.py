"""The hardware-order MAC loop: a saturating accumulator that can reach its rails depends on
the MAC order, so the loop nest runs as the hardware does, one MAC at a time per output
element, the accumulator's rule applied after every addition (docs/arithmetic.md section 9)."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import EXACT_FAST, OP_ADDER, OP_MULTIPLY


MULTIPLY_SATURATE, MULTIPLY_WRAP, ADDER_SATURATE, ADDER_WRAP = 0, 1, 2, 3


# One MAC into accumulator value v, overflow applied: (new v, 1 if the overflow rule acted).
# m is 0 for a padding tap (blocks are filled to four taps) and adds nothing. The loop names
# one of these by a literal int (`mac_term`), so that the JIT compiles one branch-free kernel
# per kind, and the disk cache keeps them (a function passed as an argument is never cached).
@njit(inline="always", fastmath=EXACT_FAST)
def multiply_saturate(v, x, w, m, lo, hi, span):
    total = v + x * w
    fitted = min(max(total, lo), hi)
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype



@njit(inline="always", fastmath=EXACT_FAST)
def multiply_wrap(v, x, w, m, lo, hi, span):
    total = v + x * w
    fitted = lo + (total - lo) % span
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype



@njit(inline="always", fastmath=EXACT_FAST)
def adder_saturate(v, x, w, m, lo, hi, span):
    total = v - abs(x - w) * m
    fitted = min(max(total, lo), hi)
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype



@njit(inline="always", fastmath=EXACT_FAST)
def adder_wrap(v, x, w, m, lo, hi, span):
    total = v - abs(x - w) * m
    fitted = lo + (total - lo) % span
    return fitted, (lo - lo) + (fitted != total)  # the event in the values' dtype



MAC_TERMS = {(OP_MULTIPLY, False): MULTIPLY_SATURATE, (OP_MULTIPLY, True): MULTIPLY_WRAP,
             (OP_ADDER, False): ADDER_SATURATE, (OP_ADDER, True): ADDER_WRAP}



@njit(inline="always", fastmath=EXACT_FAST)
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



@njit(cache=True, parallel=True, fastmath=EXACT_FAST)
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
