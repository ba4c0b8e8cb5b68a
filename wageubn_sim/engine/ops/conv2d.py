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
accumulator runs MAC by MAC in the declared order (`mac.narrow.narrow_mac_loop`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import requantize_flagged, value_range
from ...fixedpoint.format import FixedArray, Format
from ...fixedpoint.modes import Overflow, Rounding
from ...fixedpoint.scalar import DOMAIN_LIMIT, OVERFLOWED, format_range
from ..geometry import check_plane, output_size
from ..mac import FLOAT32_EXACT, OP_ADDER, OP_MULTIPLY
from ..mac.narrow import MAC_TERMS, narrow_mac_loop
from ..mac.windows import WindowMatrix
from ..mac.gemm import exact_matmul
from ..mac.phases import mac_taps, stride_phase_planes
from ..mac.weights import weight_cache, weight_summary
from ..ranges import fit_range, input_register_range
from ..registers import (ACC_EVENT, Accumulator, Events, Output, align, check_ints, input_stage,
                         output_stage)
from ..spec import OpSpec


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


def accumulator_grid(x_frac: int, weight_fmt: Format, bias_fmt: Format | None,
                     adder: bool = False) -> tuple[int, int]:
    """(F, shift): the MAC accumulator's grid 2**-F and the shift that puts each product on it
    (docs/arithmetic.md section 9). Products x*w lie on 2**-(fx + fw) and a bias on 2**-fb:
    F = max(fx + fw, fb), exact for both. The adder's differences x - w need x and w on one
    grid: F = max(fx, fw, fb), no product shift."""
    grids = [x_frac, weight_fmt.frac_bits] if adder else [x_frac + weight_fmt.frac_bits]
    if bias_fmt is not None:
        grids.append(bias_fmt.frac_bits)
    frac = max(grids)
    return frac, 0 if adder else frac - x_frac - weight_fmt.frac_bits


def conv2d(x: np.ndarray, x_frac: int, weight: np.ndarray, bias: np.ndarray | None,
           p: Conv2dParams, trace: bool = False, op: int = OP_MULTIPLY) -> Output:
    what = "Adder2d" if op == OP_ADDER else "Conv2d"
    if x.ndim == 3:  # a 1-D convolution of (N, C, L): a 2-D one of height 1, the same sums
        if weight.ndim != 4 or weight.shape[2] != 1 or (p.stride[0], p.padding[0], p.dilation[0]) != (1, 0, 1):
            raise ValueError(f"{what}: an N,C,L input takes weights (O, I, 1, K) and stride, "
                             f"padding, dilation (1, s), (0, p), (1, d); got {tuple(weight.shape)}, "
                             f"{p.stride}, {p.padding}, {p.dilation}")
        return _squeezed(conv2d(x[:, :, None, :], x_frac, weight, bias, p, trace, op), (slice(None), slice(None), 0))
    _check(x, weight, bias, p, what)
    stages: dict = {}
    x, x_frac, registers = input_stage(x, x_frac, p.input_register, p.rounding)
    if trace:
        stages["input"] = x
    n, _, h, w_in = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    oh, ow = output_size(h, kh, sh, ph, dh), output_size(w_in, kw, sw, pw, dw)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{what}: input {h}x{w_in} is smaller than the {kh}x{kw} window "
                         f"(padding {p.padding}, dilation {p.dilation})")
    check_plane(what, oh, ow)
    bias_fmt = p.bias_fmt if bias is not None else None
    frac, prod_shift = accumulator_grid(x_frac, p.weight_fmt, bias_fmt, op == OP_ADDER)
    if op == OP_ADDER:  # differences need one grid: align x and w to it
        x, weight = align(x, x_frac, frac), align(weight, p.weight_fmt.frac_bits, frac)
    bias_al = align(bias, bias_fmt.frac_bits, frac) if bias is not None else np.zeros(o, np.int64)
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
    `mac.weights.weight_summary` of the weights)."""
    return b_max + (summary["row_abs_max"] * x_max << prod_shift)


def _mac_by_mac(x, weight, bias_al, p: Conv2dParams, op, prod_shift, out_size, bound, x_max,
                w_abs_max, b_max):
    """The accumulator MAC by MAC in the declared order (`mac.narrow.narrow_mac_loop`), in the
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
    # C order whatever the fancy index gave (F for some shapes): one compiled loop per dtype
    w_taps = np.ascontiguousarray((weight[:, cij[:, 0], cij[:, 1], cij[:, 2]].astype(np.int64)
                                   << prod_shift).astype(dtype))
    out = np.empty((n, o, oh, ow), np.int64)
    acc_events = np.zeros((n, o), np.int64)
    narrow_mac_loop(planes, pitch, oh, ow, tap_plane, tap_offset, w_taps,
                    bias_al.astype(dtype), p.groups, MAC_TERMS[op, wrap],
                    MAC_TERMS[OP_MULTIPLY, wrap], dtype(lo), dtype(hi), dtype(span), acc.k_split,
                    out, acc_events)
    return out, acc_events


def exact_sums(x, weight, p: Conv2dParams, oh, ow, x_range, cache) -> np.ndarray:
    """Exact (N, O, OH, OW) sums of products, per group, through `mac.gemm.exact_matmul`."""
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
    return _squeezed(out, (slice(None), slice(None), 0, 0))


def _squeezed(out: Output, index: tuple) -> Output:
    """A 4-D run's Output at the caller's rank: its integers, flags and traced stages indexed
    (Linear: H = W = 0; a 1-D convolution: H = 0)."""
    out.q = out.q[index]
    out.flags = out.flags[index]
    out.trace = {k: (v[index] if v.ndim == 4 else v) for k, v in out.trace.items()}
    return out


# ---- backward --------------------------------------------------------------------------------
# Conv2d / Linear backward on integers: the input error and the weight and bias gradients.
#
# With the forward's input x (2**-fx), its fw weights w (2**-fw) and the output error e (2**-fe,
# already E2-quantized):
#
#     dx[n, c, y', x'] = sum over the taps that read (y', x') of e[n, o, y, x] * w[o, c, i, j]
#                        exact, at 2**-(fe + fw)
#     dw[o, c, i, j]   = sum_{n, y, x} x[n, c, y*s + i*d - p, x*s + j*d - p] * e[n, o, y, x]
#                        exact, at 2**-(fx + fe)
#     db[o]            = sum_{n, y, x} e[n, o, y, x], exact, at 2**-fe
#
# All three are exact integer sums (docs/arithmetic.md §10), computed with the forward's exact
# GEMM (`mac.gemm.exact_matmul`: BLAS chunks in which every partial sum is an exact float integer).

@njit(cache=True, parallel=True)
def col2im(dcols, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """out[n, c0 + c, y*sh + i*dh - ph, x*sw + j*dw - pw] += dcols[(c, i, j), (n, y, x)].
    Parallel over channels: each channel's taps write only that channel."""
    n, _, h, w = out.shape
    for c in prange(c1 - c0):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for b in range(n):
                    for y in range(oh):
                        yi = y * sh + i * dh - ph
                        if yi < 0 or yi >= h:
                            continue
                        col = (b * oh + y) * ow
                        for x in range(ow):
                            xi = x * sw + j * dw - pw
                            if 0 <= xi < w:
                                out[b, c0 + c, yi, xi] += dcols[row, col + x]


def check_shapes(x, weight, error, what):
    if x.ndim != 4 or error.ndim != 4 or error.shape[1] != weight.shape[0] or error.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: input {x.shape}, weights {weight.shape} and error "
                         f"{error.shape} do not fit")


def error_matrix(error: np.ndarray) -> np.ndarray:
    """The error (N, O, OH, OW) as (O, N*OH*OW), the window matrix's column order."""
    return np.ascontiguousarray(error.transpose(1, 0, 2, 3)).reshape(error.shape[1], -1)


class _TransposedWindows:
    """The window matrix read transposed, (N*OH*OW, K): the reduction of dw runs over the
    pixels. Its int8 digits are the forward's window rows (`WindowMatrix.rows`, from padded
    NHWC digit planes), row-major (N*OH*OW, K) with K kernel-major (i, j, c): no int64 window
    matrix, no transposed copy; `_weight_gradient` puts K back in channel-major order."""

    def __init__(self, windows: WindowMatrix):
        self.windows = windows

    def __call__(self, dtype):
        return self.windows.to_kernel_major(self.windows(dtype).T)

    def digit_cols(self, count: int, origin: int) -> list:
        return [self.windows.digit_rows(d, count, origin) for d in range(count)]


def _weight_gradient(x, x_range, e_mat, weight_shape, out_size, p: Conv2dParams, g: int):
    """dw of group g: e (O/g, NP) @ windows^T (NP, K), exact, as (O/g, C/g, kh, kw)."""
    og, cg, kh, kw = weight_shape[0] // p.groups, *weight_shape[1:]
    cols = WindowMatrix(x, g * cg, (g + 1) * cg, (kh, kw), p.stride, p.padding, p.dilation,
                        out_size)
    e_g = e_mat[g * og:(g + 1) * og]
    # the rows' K is kernel-major (i, j, c): each sum goes to its channel-major place (c, i, j)
    channel_major = np.arange(cg * kh * kw).reshape(cg, kh * kw).T.ravel()
    sums = exact_matmul(e_g, _TransposedWindows(cols), x_range, 1, columns=channel_major)[0]
    return sums.reshape(og, cg, kh, kw)


def conv2d_weight_gradient(x: np.ndarray, weight_shape, error: np.ndarray, p: Conv2dParams):
    """dw alone (see the module docstring), exact int64."""
    if x.shape[0] == 0:  # an empty batch: no terms
        return np.zeros(weight_shape, np.int64)
    x = np.ascontiguousarray(x, dtype=np.int64)
    e_mat, x_range = error_matrix(error), value_range(x)
    return np.concatenate([_weight_gradient(x, x_range, e_mat, weight_shape, error.shape[2:], p, g)
                           for g in range(p.groups)])


def _spread(count: int, stride: int, start: int, size: int):
    """Where ``count`` error cells land along one axis of e_pad: cell t at start + t * stride,
    kept when inside [0, size). Returns (slice into e_pad, slice of the error), or None."""
    first = max(0, -(-(-start) // stride))  # the first t with start + t * stride >= 0
    last = min(count - 1, (size - 1 - start) // stride)  # the last inside
    if last < first:
        return None
    return (slice(start + first * stride, start + last * stride + 1, stride), slice(first, last + 1))


def transposed_kernel(weight: np.ndarray, groups: int) -> np.ndarray:
    """A convolution's weights (A, B, KH, KW) as those of the convolution that transposes it,
    (groups * B, A / groups, KH, KW): within each group the in and out axes swapped and the
    kernel flipped (its own inverse)."""
    a, b, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(groups, a // groups, b, kh, kw).transpose(0, 2, 1, 3, 4)
                                [..., ::-1, ::-1]).reshape(groups * b, a // groups, kh, kw)


def conv2d_input_error(x_shape, weight: np.ndarray, error: np.ndarray, p: Conv2dParams) -> np.ndarray:
    """dx as the forward convolution of the error (the transposed convolution): with e_up the
    error spread to every s-th cell (zeros between) and padded by (k - 1) d - p on each side
    (cropped where that is negative; only cells that dx reads are kept),

        dx[n, c, y', x'] = sum_{o, i, j} e_pad[n, o, y' + i d, x' + j d] * w[o, c, kh-1-i, kw-1-j]

    i.e. a stride-1 conv of e_pad with the weights transposed per group and flipped, through
    the forward's exact sums (`conv2d.exact_sums`). Exact int64, at 2**-(fe + fw)."""
    n, c, h, w = x_shape
    o, cg, kh, kw = weight.shape
    og = o // p.groups
    (sh, sw), (ph, pw), (dh, dw_) = p.stride, p.padding, p.dilation
    oh, ow = error.shape[2:]
    e_pad = np.zeros((n, o, h + (kh - 1) * dh, w + (kw - 1) * dw_), np.int64)
    rows = _spread(oh, sh, (kh - 1) * dh - ph, e_pad.shape[2])
    cols = _spread(ow, sw, (kw - 1) * dw_ - pw, e_pad.shape[3])
    if rows and cols:
        e_pad[:, :, rows[0], cols[0]] = error[:, :, rows[1], cols[1]]
    # the weights transposed per group and flipped, in the narrowest integer type that holds
    # them (a fraction of the bytes to permute; the exact sums read any integer type); their
    # range is the forward's (`weight_cache`) when it has seen them
    cache = weight_cache(weight)
    lo, hi = cache["range"] if "range" in cache else value_range(weight)
    narrow = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                  if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    w_t = transposed_kernel(weight.astype(narrow), p.groups)
    params = Conv2dParams(p.weight_fmt, dilation=p.dilation, groups=p.groups)
    # e_pad holds the error's values and zeros, which every exact method's range includes
    return exact_sums(e_pad, w_t, params, h, w, value_range(error), {})


def conv2d_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, p: Conv2dParams,
                    with_bias: bool = False):
    """(dx, dw, db) as exact int64 arrays; see the module docstring for their grids."""
    check_shapes(x, weight, error, "conv backward")
    grad_w = conv2d_weight_gradient(x, weight.shape, error, p)
    dx = conv2d_input_error(x.shape, weight, error, p)
    db = error.sum(axis=(0, 2, 3)) if with_bias else None
    return dx, grad_w, db


def linear_backward(x: np.ndarray, weight: np.ndarray, error: np.ndarray, with_bias: bool = False):
    """Linear as a 1x1 convolution: x (N, K), weight (O, K), error (N, O)."""
    dx, dw, db = conv2d_backward(x[:, :, None, None], weight[:, :, None, None],
                                 error[:, :, None, None], Conv2dParams(None), with_bias)
    return dx[:, :, 0, 0], dw[:, :, 0, 0], db


# ---- the spec ---------------------------------------------------------------------------------

def mac_arrays(p: Conv2dParams) -> dict:
    """The arrays of a MAC layer: its weights, and its bias where it declares one."""
    out = {"weight": p.weight_fmt}
    if p.bias_fmt is not None:
        out["bias"] = p.bias_fmt
    return out


def mac_range(p: Conv2dParams, arrays, ins, adder: bool = False) -> tuple:
    """Bounds of a MAC layer's accumulator for inputs in ins[0]'s range: per output, the sum
    of each term's extreme (a product's over x's two ends; the adder's -|x - w| at the end
    farther from w), plus the aligned bias, through the accumulator's register."""
    (x_lo, x_hi), fx = input_register_range(*ins[0], p.input_register, p.rounding)
    x_lo, x_hi = min(x_lo, 0), max(x_hi, 0)  # padding reads 0
    weight = arrays["weight"]
    w = weight.reshape(weight.shape[0], -1).astype(object)
    frac, shift = accumulator_grid(fx, p.weight_fmt, p.bias_fmt, adder)
    if adder:
        sx, sw = frac - fx, frac - p.weight_fmt.frac_bits
        far = np.maximum(np.abs((x_lo << sx) - (w << sw)), np.abs((x_hi << sx) - (w << sw)))
        lo_o, hi_o = -far.sum(axis=1), np.zeros(len(w), dtype=object)
    else:
        lo_o = np.minimum(w * x_lo, w * x_hi).sum(axis=1) * (1 << shift)
        hi_o = np.maximum(w * x_lo, w * x_hi).sum(axis=1) * (1 << shift)
    if "bias" in arrays:
        aligned = arrays["bias"].astype(object) * (1 << (frac - p.bias_fmt.frac_bits))
        lo_o, hi_o = lo_o + aligned, hi_o + aligned
    lo, hi = int(min(lo_o)), int(max(hi_o))
    acc = p.accumulator
    if acc.bits is not None:
        lo, hi = fit_range(lo, hi, frac, Format(acc.bits, frac), Rounding.FLOOR, acc.overflow)
    return lo, hi, frac


def layer_input(p: Conv2dParams, ins, out) -> tuple:
    """(x, frac) as a MAC layer read it: after its input register (the traced forward's)."""
    return out.trace["input"], p.input_register.frac_bits if p.input_register is not None else ins[0][1]


def mac_gradients(dx, dw, db, dx_frac: int, dw_frac: int, error: FixedArray) -> tuple:
    """A MAC layer's backward as a spec gives it: ([input error], {role: raw gradient})."""
    grads = {"weight": FixedArray(dw, dw_frac + error.frac_bits)}
    if db is not None:
        grads["bias"] = FixedArray(db, error.frac_bits)
    return [FixedArray(dx, error.frac_bits + dx_frac)], grads


def mac_backward(p: Conv2dParams, arrays, ins, out, error, linear_layer: bool = False):
    """Conv2d's or Linear's backward (`conv2d_backward`, `linear_backward`): dx on the grid of
    the error times the weights', dw on the input's times the error's."""
    x, x_frac = layer_input(p, ins, out)
    weight, has_bias = arrays["weight"], "bias" in arrays
    dx, dw, db = (linear_backward(x, weight, error.q, has_bias) if linear_layer
                  else conv2d_backward(x, weight, error.q, p, has_bias))
    return mac_gradients(dx, dw, db, p.weight_fmt.frac_bits, x_frac, error)


def accumulator_register(p, out) -> list:
    return [("accumulator", out.trace["accumulator"], out.acc_fmt)]


def mac_spec(name, run, rank, **extra):
    """A MAC layer's spec: weights of ``rank``, a bias, the conv datapath's registers."""
    fields = dict(arrays=mac_arrays, array_ranks={"weight": rank, "bias": 1},
                  output_fields=("out_fmt", "rounding", "out_overflow"), input_register=True,
                  mac="multiply", inner_registers=accumulator_register, trainable=("weight", "bias"),
                  error_quantizer="E2", grad_quantizer="G",
                  backward=lambda p, a, ins, out, e: mac_backward(p, a, ins, out, e, name == "linear"))
    fields.update(extra)
    return OpSpec(name, fields.pop("params", Conv2dParams), run,
                  fields.pop("static_range", mac_range), **fields)


SPECS = (
    mac_spec("conv2d", lambda p, a, ins, t: conv2d(*ins[0], a["weight"], a.get("bias"), p, t), 4,
              planned=True),
    mac_spec("linear", lambda p, a, ins, t: linear(*ins[0], a["weight"], a.get("bias"), p, t), 2,
              planned=True),
)
