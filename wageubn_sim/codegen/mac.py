"""The C model's rules for the MAC layers (conv2d, linear, conv2d_bn, conv_transpose2d): one
accumulator loop (`_accumulate`) in the engine's registers and event semantics
(docs/arithmetic.md sections 9 and 13)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..engine.mac.weights import weight_summary
from ..engine.ops.conv2d import accumulator_grid, multiply_bound
from ..fixedpoint.modes import Overflow
from ..fixedpoint.scalar import DOMAIN_LIMIT
from .rules import CodegenError, c_int, input_register, output_register, registers, rule


@dataclasses.dataclass
class _Sums:
    """A MAC layer's reduction as the C code computes it: its input buffer (C, H, W) on the
    grid 2**-fx, weights (O, cg, KH, KW) and geometry, the output size."""
    x: str
    chw: tuple
    fx: int
    weight: np.ndarray
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out: tuple  # (OH, OW)


def _accumulate(e, node, sums: _Sums, guard_x: tuple, extra=None) -> tuple[str, int]:
    """(C code filling acc with the accumulator, its frac): the accumulator preloaded with the
    aligned bias, then the products on its grid: exact (any order), WRAP (the exact sum wrapped
    once, an event per element), or SAT (clamped after every addition in the declared MAC order
    and k_split chunks, an event per clamp). ``guard_x`` (buffer, size, static magnitude): the
    layer's input, checked at run time where the static bound fails; ``extra(bound)``: a further
    condition on the values formed after the sums, given the accumulator's bound."""
    p = node.params
    (c, h, w), (oh, ow), weight = sums.chw, sums.out, sums.weight
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = sums.stride, sums.padding, sums.dilation
    bias = node.arrays.get("bias")
    adder = node.op == "adder2d"  # -|x - w| on one grid, MAC by MAC (section 9)
    frac, prod_shift = accumulator_grid(sums.fx, p.weight_fmt, p.bias_fmt if bias is not None else None, adder)
    bias_al = np.zeros(o, object) if bias is None else bias.astype(object) * (1 << (frac - p.bias_fmt.frac_bits))
    b_max = max((abs(int(v)) for v in bias_al), default=0)
    summary = weight_summary(weight.reshape(o, -1))
    w_abs = int(np.abs(weight).max(initial=0)) << (frac - p.weight_fmt.frac_bits) if adder else 0
    bound_of = (lambda m: b_max + cg * kh * kw * ((m << (frac - sums.fx)) + w_abs)) if adder else \
        (lambda m: multiply_bound(summary, b_max, m, prod_shift))
    fits = lambda m: bound_of(m) < DOMAIN_LIMIT and (extra is None or extra(bound_of(m)))
    guard, x_max = e.guard(node, guard_x[0], guard_x[1], guard_x[2], fits, "a partial sum of its accumulator")
    bound = bound_of(x_max)
    acc = p.accumulator
    saturating = acc.bits is not None and acc.overflow != Overflow.WRAP
    per_mac = saturating or adder  # the adder's accumulator is MAC by MAC in either mode
    if saturating:
        a_lo, a_hi = -(1 << (acc.bits - 1)) + (acc.overflow == Overflow.SAT_SYM), (1 << (acc.bits - 1)) - 1
        if b_max and (min(int(v) for v in bias_al) < a_lo or max(int(v) for v in bias_al) > a_hi):
            raise CodegenError(f"node {node.name}: its aligned bias leaves its saturating accumulator")
    # products land on the grid (the adder: the weights on it, the input moved onto it per MAC)
    w_ptr = e.constant(weight.astype(np.int64) * (1 << ((frac - p.weight_fmt.frac_bits) if adder else prod_shift)))
    b_ptr = e.constant(np.array([int(v) for v in bias_al], np.int64))
    og, k_total, x = o // sums.groups, cg * kh * kw, sums.x
    code = guard + f"    const int64_t *W = {w_ptr}, *B = {b_ptr};\n"
    if per_mac:  # MAC by MAC in the declared order, the accumulator's rule after every addition
        taps = [(ci, ky, kx) for ci in range(cg) for ky in range(kh) for kx in range(kw)]
        if acc.mac_order == "kernel_major":
            taps = [(ci, ky, kx) for ky in range(kh) for kx in range(kw) for ci in range(cg)]
        tap_list = e.constant(np.array([ci * kh * kw + ky * kw + kx for ci, ky, kx in taps], np.int64))
        chunk = -(-k_total // acc.k_split)
        fit = f"wg_fit(v, {acc.bits}, 1, {int(acc.overflow)})" if acc.bits is not None else "v"
        event = "wraps" if acc.overflow == Overflow.WRAP else "saturations"
        term = (f"-((xv * {c_int(1 << (frac - sums.fx))} - w_o[k]) < 0 ? w_o[k] - xv * {c_int(1 << (frac - sums.fx))} "
                f": xv * {c_int(1 << (frac - sums.fx))} - w_o[k])") if adder else "xv * w_o[k]"
        return code + f"""    const int64_t *T = {tap_list};
    for (int64_t oc = 0; oc < {o}; oc++) {{
        const int64_t *x_g = {x} + (oc / {og}) * {cg * h * w};
        const int64_t *w_o = W + oc * {k_total};
        for (int64_t oy = 0; oy < {oh}; oy++)
            for (int64_t ox = 0; ox < {ow}; ox++) {{
                int64_t part[{acc.k_split}];
                for (int s = 0; s < {acc.k_split}; s++) part[s] = s == 0 ? B[oc] : 0;
                for (int64_t t = 0; t < {k_total}; t++) {{  /* the declared MAC order */
                    int64_t k = T[t], ci = k / {kh * kw}, ky = (k / {kw}) % {kh}, kx = k % {kw};
                    int64_t iy = oy * {sh} - {ph} + ky * {dh}, ix = ox * {sw} - {pw} + kx * {dw};
                    int64_t xv = (iy >= 0 && iy < {h} && ix >= 0 && ix < {w}) ? x_g[ci * {h * w} + iy * {w} + ix] : 0;
                    int64_t v = part[t / {chunk}] + {term}, fitted = {fit};
                    if (fitted != v) ev_acc->{event}++;
                    part[t / {chunk}] = fitted;
                }}
                for (int s = 1; s < {acc.k_split}; s++) {{  /* the chunks added in order into the first */
                    int64_t v = part[0] + part[s], fitted = {fit};
                    if (fitted != v) ev_acc->{event}++;
                    part[0] = fitted;
                }}
                acc[(oc * {oh} + oy) * {ow} + ox] = part[0];
            }}
    }}
""", frac
    # exact (or wrapped once after): any order; weight by weight over the output rows, in
    # int32 where every partial sum is below 2**31, else int64
    t = "int32_t" if bound < (1 << 31) - 1 else "int64_t"
    narrow = t == "int32_t"
    code += (f"""    static int32_t x32[{c * h * w}], a32[{o * oh * ow}];
    for (int64_t i = 0; i < {c * h * w}; i++) x32[i] = (int32_t){x}[i];  /* |x| < 2**31 (the bound) */
""" if narrow else "") + f"""    for (int64_t oc = 0; oc < {o}; oc++) {{
        const {t} *x_g = {'x32' if narrow else x} + (oc / {og}) * {cg * h * w};
        const int64_t *w_o = W + oc * {k_total};
        {t} *a_o = {'a32' if narrow else 'acc'} + oc * {oh * ow};
        for (int64_t i = 0; i < {oh * ow}; i++) a_o[i] = ({t})B[oc];
        for (int64_t ci = 0; ci < {cg}; ci++)
            for (int64_t ky = 0; ky < {kh}; ky++)
                for (int64_t kx = 0; kx < {kw}; kx++) {{
                    const {t} wv = ({t})w_o[(ci * {kh} + ky) * {kw} + kx];
                    const int64_t dx = kx * {dw} - {pw};  /* ix = ox * {sw} + dx */
                    const int64_t ox_lo = dx >= 0 ? 0 : (-dx + {sw - 1}) / {sw};
                    const int64_t ox_hi = {w} - 1 - dx < 0 ? 0 : ({w} - 1 - dx) / {sw} + 1;
                    const int64_t ox_end = ox_hi < {ow} ? ox_hi : {ow};
                    if (wv == 0) continue;
                    for (int64_t oy = 0; oy < {oh}; oy++) {{
                        const int64_t iy = oy * {sh} - {ph} + ky * {dh};
                        if (iy < 0 || iy >= {h}) continue;
                        const {t} *xr = x_g + ci * {h * w} + iy * {w};
                        {t} *ar = a_o + oy * {ow};
                        for (int64_t ox = ox_lo; ox < ox_end; ox++) ar[ox] += xr[ox * {sw} + dx] * wv;
                    }}
                }}
    }}
""" + (f"    for (int64_t i = 0; i < {o * oh * ow}; i++) acc[i] = a32[i];\n" if narrow else "")
    if acc.bits is not None:  # WRAP (a multiply layer's): the exact sum wrapped once
        code += f"""    for (int64_t i = 0; i < {o * oh * ow}; i++) {{
        int64_t wrapped = wg_fit(acc[i], {acc.bits}, 1, {int(Overflow.WRAP)});
        if (wrapped != acc[i]) ev_acc->wraps++;
        acc[i] = wrapped;
    }}
"""
    return code, frac


def _mac_frame(ev, code: str, size: int, value: str) -> str:
    """A MAC layer's body: its accumulator events' pointer, its sums, then each output value."""
    return f"""    wg_events *ev_acc = {ev['accumulator']};
    (void)ev_acc;
{code}    for (int64_t i = 0; i < {size}; i++) {{
        int64_t a = acc[i];
        y[i] = {value};
    }}
"""


@rule("conv2d", "linear", "conv2d_bn", "adder2d")
def _mac(e, node):
    """Conv2d (1-D as 2-D of height 1), Linear (1x1), Adder2d and Conv2d with BatchNorm folded
    in (its accumulator times the per-channel multiplier plus the offset, `conv2d_bn`): the
    input register, the accumulator (`_accumulate`), the output register."""
    p = node.params
    names, ev = registers(node, "accumulator", "output")
    shape = e.shapes[node.inputs[0]]
    weight = node.arrays["weight"]
    if node.op == "linear":
        (c, h, w), weight = (shape[0], 1, 1), weight[:, :, None, None]
    else:
        c, h, w = (shape[0], 1, shape[1]) if len(shape) == 2 else shape
    o = weight.shape[0]
    out_shape = e.shapes[node.name]
    oh, ow = (1, 1) if node.op == "linear" else ((1, out_shape[1]) if len(out_shape) == 2 else out_shape[1:])
    code, x, fx = input_register(e, node, "x0", c * h * w, p.input_register, p.rounding, ev.get("input"))
    sums = _Sums(x, (c, h, w), fx, weight, p.stride, p.padding, p.dilation, p.groups, (oh, ow))
    extra, value = None, "a"
    if node.op == "conv2d_bn":  # s = acc * m_c + o_c, exact (the folded BatchNorm's registers)
        m, off = node.arrays["multiplier"], node.arrays["offset"]
        m_max, o_max = int(np.abs(m).max(initial=0)), int(np.abs(off).max(initial=0))
        extra = lambda bound: bound * m_max + o_max < DOMAIN_LIMIT
        value = f"a * {e.constant(m)}[i / {oh * ow}] + {e.constant(off)}[i / {oh * ow}]"
    sums_code, frac = _accumulate(e, node, sums, (x, c * h * w, e.input_magnitude(node)), extra)
    if node.op == "conv2d_bn":
        if frac != p.accumulator_frac:
            raise CodegenError(f"node {node.name}: its accumulator is at 2**-{frac}, its folded offsets "
                               f"were made for 2**-{p.accumulator_frac}; refold the graph")
        frac += p.multiplier_frac
    out = output_register(e, node, value, frac, p.out_fmt, p.rounding, p.out_overflow, ev["output"])
    return names, out_shape, code + _mac_frame(ev, sums_code, o * oh * ow, out)  # the accumulator's shape is the output's


@rule("conv_transpose2d")
def _conv_transpose(e, node):
    """The input scattered (s - 1 zeros between pixels, the borders around), then the
    equivalent convolution's accumulator (`conv_transpose2d`), the output register."""
    from ..engine.ops.conv_transpose2d import borders, equivalent
    p = node.params
    names, ev = registers(node, "accumulator", "output")
    c, h, w = e.shapes[node.inputs[0]]
    o, oh, ow = e.shapes[node.name]
    code, x, fx = input_register(e, node, "x0", c * h * w, p.input_register, p.rounding, ev.get("input"))
    weight, conv_p = equivalent(node.arrays["weight"], p)
    (bh, bw), (ah, aw) = borders(node.arrays["weight"].shape, p)
    (sh, sw) = p.stride
    hs, ws = bh + (h - 1) * sh + 1 + ah, bw + (w - 1) * sw + 1 + aw
    code += f"""    static int64_t xs[{c * hs * ws}];
    for (int64_t i = 0; i < {c * hs * ws}; i++) xs[i] = 0;
    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t i = 0; i < {h}; i++)
            for (int64_t j = 0; j < {w}; j++)
                xs[(ch * {hs} + {bh} + i * {sh}) * {ws} + {bw} + j * {sw}] = {x}[(ch * {h} + i) * {w} + j];
"""
    sums = _Sums("xs", (c, hs, ws), fx, weight, conv_p.stride, conv_p.padding, conv_p.dilation, p.groups, (oh, ow))
    sums_code, frac = _accumulate(e, node, sums, (x, c * h * w, e.input_magnitude(node)))
    out = output_register(e, node, "a", frac, p.out_fmt, p.rounding, p.out_overflow, ev["output"])
    return names, (o, oh, ow), code + _mac_frame(ev, sums_code, o * oh * ow, out)
