"""Conv2d (and Linear, as a 1x1 conv; and Adder2d's MAC): integer datapath of one layer.

    x --input register--> x' --MACs into the accumulator (preloaded with the aligned bias)-->
    acc --shift + round--> rounded --overflow--> y

Grids: x' at 2**-fx, w at 2**-fw, products at 2**-(fx+fw). The accumulator works at
F = max(fx + fw, fb): products are shifted left by F - (fx + fw), the bias by F - fb, both exact.
Without an output format the accumulator itself is the output (the torch path's conv output
without iostrict is the exact sum).

Overflow bound (why the fast path is exact): every partial sum of output o is at most
|b_o| + sum_k |w[o,k]| * max|x| (times 2**(F-fx-fw)). When that bound fits the accumulator, no
order can overflow it, and any exact method gives the register's value; otherwise a saturating
accumulator runs MAC by MAC in the declared order (`mac.narrow_mac_loop`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..fixedpoint.core import (DOMAIN_LIMIT, OVERFLOWED, format_range, requantize_flagged,
                               value_range)
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from .mac import (FLOAT32_EXACT, MAC_TERMS, OP_ADDER, OP_MULTIPLY, WindowMatrix, exact_matmul,
                  mac_taps, narrow_mac_loop, stride_phase_planes, weight_cache, weight_summary)
from .registers import (ACC_EVENT, Accumulator, Events, Output, align, check_ints, check_plane,
                        input_stage, output_stage)


@dataclasses.dataclass(frozen=True)
class Conv2dParams:
    weight_fmt: Format
    bias_fmt: Format | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    input_register: Format | None = None  # iostrict: x held in this register first
    accumulator: Accumulator = Accumulator()
    out_fmt: Format | None = None  # None: the accumulator is the output
    rounding: Rounding = Rounding.HALF_EVEN
    out_overflow: Overflow = Overflow.SAT_SYM

    def __post_init__(self):
        check_ints("Conv2d", 1, stride=self.stride, dilation=self.dilation)
        check_ints("Conv2d", 0, padding=self.padding)
        check_ints("Conv2d", 1, pair=False, groups=self.groups)


def _check(x, weight, bias, p: Conv2dParams, what: str):
    if x.ndim != 4:
        raise ValueError(f"{what} expects an N,C,H,W input, got shape {x.shape}")
    o, cg = weight.shape[:2]
    if x.shape[1] != cg * p.groups or o % p.groups:
        raise ValueError(f"{what}: input has {x.shape[1]} channels, weights {tuple(weight.shape)} "
                         f"with groups={p.groups} need {cg * p.groups}")
    if bias is not None and bias.shape != (o,):
        raise ValueError(f"{what}: bias shape {bias.shape} != ({o},)")
    cache = weight_cache(weight)
    if "range" not in cache:
        cache.update(weight_summary(weight.reshape(o, -1)))
    lo, hi = cache["range"]
    if p.weight_fmt.bounded and (lo < p.weight_fmt.min_int or hi > p.weight_fmt.max_int):
        raise ValueError(f"{what}: weights outside their format {p.weight_fmt.describe()}")


def _out_size(size, k, s, pad, d):
    return (size + 2 * pad - d * (k - 1) - 1) // s + 1


def conv2d(x: np.ndarray, x_frac: int, weight: np.ndarray, bias: np.ndarray | None,
           p: Conv2dParams, trace: bool = False, op: int = OP_MULTIPLY) -> Output:
    what = "Adder2d" if op == OP_ADDER else "Conv2d"
    _check(x, weight, bias, p, what)
    stages: dict = {}
    x, x_frac, registers = input_stage(x, x_frac, p.input_register, p.rounding)
    if trace:
        stages["input"] = x
    n, _, h, w_in = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(w_in, kw, sw, pw, dw)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{what}: input {h}x{w_in} is smaller than the {kh}x{kw} window "
                         f"(padding {p.padding}, dilation {p.dilation})")
    check_plane(what, oh, ow)
    fw = p.weight_fmt.frac_bits
    fb = p.bias_fmt.frac_bits if bias is not None else -10**6
    if op == OP_ADDER:  # differences need one grid: align x and w to it
        frac = max(x_frac, fw, fb)
        x, weight = align(x, x_frac, frac), align(weight, fw, frac)
        prod_shift = 0
    else:
        frac = max(x_frac + fw, fb)
        prod_shift = frac - (x_frac + fw)
    bias_al = align(bias, fb, frac) if bias is not None else np.zeros(o, np.int64)
    acc = p.accumulator
    if bias is not None and acc.bits is not None and acc.overflow != Overflow.WRAP:
        # docs §9: a saturating accumulator's preload must hold the aligned bias (clamping it
        # would change the sum's meaning); a wrapping one keeps its low bits, like every add
        lo, hi = (int(v) for v in format_range(acc.bits, True, int(acc.overflow)))
        b_lo, b_hi = value_range(bias_al)
        if b_lo < lo or b_hi > hi:
            raise ValueError(f"{what}: the bias, aligned to the accumulator's grid 2**-{frac}, "
                             f"reaches {b_lo if b_lo < lo else b_hi}, outside the {acc.bits}-bit "
                             "saturating accumulator it preloads; widen the accumulator or give "
                             "the bias fewer bits")

    x_range = value_range(x)
    x_max = max(-x_range[0], x_range[1])
    cache = weight_cache(weight)
    if "row_abs_max" not in cache:  # the adder's aligned weights are a fresh array
        cache.update(weight_summary(weight.reshape(o, -1)))
    b_max = int(np.abs(bias_al).max(initial=0))
    if op == OP_ADDER:
        bound = b_max + cg * kh * kw * (x_max + cache["abs_max"])
    else:
        bound = multiply_bound(cache, b_max, x_max, prod_shift)
    if bound >= DOMAIN_LIMIT:
        raise OverflowError(f"{what}: a partial sum may reach 2**{bound.bit_length() - 1}, beyond "
                            "the 62-bit domain; give the input a narrower format or the "
                            "accumulator a width")
    hi = (1 << (acc.bits - 1)) - 1 if acc.bits else None
    per_mac = op == OP_ADDER or (acc.bits is not None and acc.overflow != Overflow.WRAP and bound > hi)
    events = registers["accumulator"] = Events()
    flags = np.zeros((n, o, oh, ow), np.uint8)
    if per_mac:
        out, acc_events = _mac_by_mac(x, weight, bias_al, p, op, prod_shift, (oh, ow), bound,
                                      x_max, cache["abs_max"], b_max)
        count = int(acc_events.sum())
        if acc.overflow == Overflow.WRAP:
            events.wraps += count
        else:
            events.saturations += count
        flags |= np.where(acc_events > 0, ACC_EVENT, 0).astype(np.uint8)[:, :, None, None]
        accumulator = out
        if trace:
            stages["accumulator"] = out
    else:
        exact = exact_sums(x, weight, p, oh, ow, x_range, cache)  # a fresh array: edit in place
        if prod_shift:
            exact <<= prod_shift
        if bias is not None:
            exact += bias_al[None, :, None, None]
        if acc.bits is not None:  # WRAP, or a bound that never reaches the rails
            accumulator, f = requantize_flagged(exact, frac, Format(acc.bits, frac), Rounding.FLOOR,
                                                acc.overflow)
            wrapped = (f & OVERFLOWED) != 0
            events.wraps += int(np.count_nonzero(wrapped))
            flags |= np.where(wrapped, ACC_EVENT, 0).astype(np.uint8)
        else:
            accumulator = exact
        if trace:
            stages["sum"] = exact
            stages["accumulator"] = accumulator
    q, fmt, out_events, flags = output_stage(accumulator, frac, p.out_fmt, p.rounding,
                                             p.out_overflow, trace, stages, flags)
    acc_fmt = Format(acc.bits, frac)
    if p.out_fmt is None:
        fmt = acc_fmt
    registers["output"] = out_events
    return Output(q, fmt, Events.total(registers.values()), stages, flags, registers, acc_fmt)


def multiply_bound(summary: dict, b_max: int, x_max: int, prod_shift: int) -> int:
    """The largest |partial sum| a multiply layer can form, in any MAC order, on the
    accumulator's grid: max|b| + max_o sum_k |w[o, k]| * max|x| * 2**prod_shift (``summary``:
    `mac.weight_summary` of the weights)."""
    return b_max + (summary["row_abs_max"] * x_max << prod_shift)


def _mac_by_mac(x, weight, bias_al, p: Conv2dParams, op, prod_shift, out_size, bound, x_max,
                w_abs_max, b_max):
    """The accumulator MAC by MAC in the declared order (`mac.narrow_mac_loop`), in the
    narrowest array dtype that holds every value exactly. Returns (sums, events per n, o)."""
    acc = p.accumulator
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    (sh, sw), (_, pw), (dh, dw) = p.stride, p.padding, p.dilation
    oh, ow = out_size
    if acc.bits is None:  # exact: rails beyond the domain, never reached (bound < 2**61)
        lo, hi = -2 * DOMAIN_LIMIT, 2 * DOMAIN_LIMIT
    else:
        lo, hi = (int(v) for v in format_range(acc.bits, True, int(acc.overflow)))
    wrap = acc.bits is not None and acc.overflow == Overflow.WRAP
    span = 1 << acc.bits if wrap else 1
    # |v| <= max(|bias|, min(bound, rails)) after every step (a fit never grows |v|), so every
    # sum below stays under ``largest``; float32 also counts events, up to 4 per plane element.
    product_max = (x_max + w_abs_max) if op == OP_ADDER else (x_max * w_abs_max << prod_shift)
    largest = 2 * max(b_max, min(bound, max(-lo, hi))) + product_max + (-lo if wrap else 0)
    plane = oh * -(-(x.shape[3] + 2 * pw) // sw)  # outputs at the stride phases' row pitch
    dtype = np.float32 if max(largest, 4 * plane) < FLOAT32_EXACT else np.int64
    planes, pitch = stride_phase_planes(x, p.padding, p.stride, dtype)
    cij, tap_plane, tap_offset = mac_taps(cg, kh, kw, sh, sw, dh, dw, pitch,
                                          acc.mac_order == "kernel_major")
    w_taps = (weight[:, cij[:, 0], cij[:, 1], cij[:, 2]].astype(np.int64) << prod_shift).astype(dtype)
    out = np.empty((n, o, oh, ow), np.int64)
    acc_events = np.zeros((n, o), np.int64)
    narrow_mac_loop(planes, pitch, oh, ow, tap_plane, tap_offset, w_taps,
                    bias_al.astype(dtype), p.groups, MAC_TERMS[op, wrap],
                    MAC_TERMS[OP_MULTIPLY, wrap], dtype(lo), dtype(hi), dtype(span), acc.k_split,
                    out, acc_events)
    return out, acc_events


def exact_sums(x, weight, p: Conv2dParams, oh, ow, x_range, cache) -> np.ndarray:
    """Exact (N, O, OH, OW) sums of products, per group, through `mac.exact_matmul`."""
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    if n == 0:  # an empty batch
        return np.zeros((0, o, oh, ow), np.int64)
    og = o // p.groups
    stride = p.stride
    if (kh, kw) == (1, 1) and p.padding == (0, 0) and stride != (1, 1):
        # a strided 1x1 conv (a ResNet downsample) reads one pixel in sh*sw: take those first
        x, stride = x[:, :, ::stride[0], ::stride[1]][:, :, :oh, :ow], (1, 1)
    x = np.ascontiguousarray(x)
    parts = []
    for g in range(p.groups):
        cols = WindowMatrix(x, g * cg, (g + 1) * cg, (kh, kw), stride, p.padding, p.dilation,
                             (oh, ow))
        w_g = weight[g * og:(g + 1) * og].reshape(og, -1)
        parts.append(exact_matmul(w_g, cols, x_range, n, cache.setdefault(g, {})))  # (N, O/g, P)
    sums = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return sums.reshape(n, o, oh, ow)


def linear(x: np.ndarray, x_frac: int, weight: np.ndarray, bias, p: Conv2dParams,
           trace: bool = False) -> Output:
    """Linear as a 1x1 convolution: x (N, K), weight (O, K)."""
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"Linear: input {x.shape} does not fit weights {weight.shape}")
    out = conv2d(x[:, :, None, None], x_frac, weight[:, :, None, None], bias, p, trace)
    out.q = out.q[:, :, 0, 0]
    out.flags = out.flags[:, :, 0, 0]
    out.trace = {k: (v[:, :, 0, 0] if v.ndim == 4 else v) for k, v in out.trace.items()}
    return out
