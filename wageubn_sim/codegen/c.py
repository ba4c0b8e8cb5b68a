"""The golden model as portable C99 (`wageubn-sim codegen GRAPH -o DIR`): one function per
layer, one for the network, the contract's primitives once in `runtime/wageubn_fixed.h`, the
parameters in a binary file checked by CRC-32 at init (or compiled in: ``embed``), a `golden`
program that reads a bundle's input integers and writes the output (and, with ``--taps``,
every layer's accumulator and output in the bundle's names, and its events per register).

Each op is one rule in ``RULES`` (keyed by op name, as the exporter's): the layer's exact
computation in int64, then its registers through `wg_register`, in the order and with the event
counts of the engine's kernel (docs/arithmetic.md sections 2 to 4 and 9). Every value a layer
forms is bounded from the graph's static ranges before any code is written: a graph whose
bounds leave the 62-bit domain is refused, so the C code never overflows (no undefined
behaviour), and an op without a rule is refused with the node named.
"""
from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np

from ..engine.mac.weights import weight_summary
from ..engine.ops.conv2d import accumulator_grid, multiply_bound
from ..engine.ops.thresholds import clamped_to_range
from ..engine.ranges import input_register_range
from ..engine.registers import Accumulator
from ..execution.ranges import value_ranges
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.scalar import DOMAIN_LIMIT
from ..version import __version__
from ..vectors.bundle import file_safe

RUNTIME = Path(__file__).with_name("runtime")
RULES: dict = {}  # op name -> rule(emitter, node) -> C body of the layer's function


class CodegenError(ValueError):
    """A graph (or a node of it) the C model cannot compute exactly: the message names it."""


def rule(*ops):
    def register(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return register


def _c_int(v: int) -> str:
    """An int64 literal, the most negative one written without overflow."""
    v = int(v)
    return f"(-INT64_C({-(v + 1)}) - 1)" if v < 0 else f"INT64_C({v})"


def _register_args(fmt: Format, rounding, overflow) -> str:
    """wg_register's (bits, signed, rounding, overflow) of a format and its modes."""
    return f"{fmt.bits or 0}, {int(fmt.signed)}, {int(Rounding(rounding))}, {int(Overflow(overflow))}"


@dataclasses.dataclass
class _Layer:
    index: int
    name: str
    op: str
    inputs: list  # C buffer names of its inputs
    registers: list  # the engine's register names, in its order
    shape: tuple
    accumulator: tuple | None  # the accumulator tap's shape (MAC layers)
    body: str


class _Emitter:
    def __init__(self, graph):
        self.graph = graph
        spec = graph.inputs[0]
        if spec.levels is not None:
            raise CodegenError(f"input {spec.name}: quantized by float thresholds (an imported float "
                               "input); the golden model reads the input's integers: give the "
                               "bundle's input.npy, or compile with an input Quant")
        self.shapes = {spec.name: tuple(spec.shape)}
        self.fracs = {spec.name: spec.fmt.frac_bits}
        for node in graph.nodes:
            self.shapes[node.name] = tuple(node.out_shape)
            self.fracs[node.name] = node.out_fmt.frac_bits
        try:
            self.ranges = value_ranges(graph)
            self.raw = value_ranges(graph, before_output_register=True)
        except (ValueError, OverflowError) as err:
            raise CodegenError(f"the graph's static ranges: {err}") from None
        self.params: list = []
        self.size = 0

    def constant(self, array) -> str:
        """The int64 array among the parameters: a C expression for its first value."""
        flat = np.ascontiguousarray(array, dtype=np.int64).reshape(-1)
        at = self.size
        self.params.append(flat)
        self.size += flat.size
        return f"(WG_P + {at})"

    def magnitude(self, name) -> int:
        lo, hi = self.ranges[name]
        return max(-int(lo), int(hi), 0)

    def check(self, node, magnitude: int, what: str) -> None:
        if magnitude >= DOMAIN_LIMIT:
            raise CodegenError(f"node {node.name} ({node.op}): {what} may reach 2**{magnitude.bit_length() - 1}, "
                               "beyond the 62-bit domain the C model computes in; give the input a "
                               "narrower format or the accumulator a width")


def _image(shape) -> int:
    return int(math.prod(shape))


def _output_register(e, node, value: str, frac: int, fmt, rounding, overflow, ev: str) -> str:
    """The C expression of ``value`` (at 2**-frac) moved into its output register (None: as it is)."""
    if fmt is None:
        return value
    return f"wg_register({value}, {frac - fmt.frac_bits}, {_register_args(fmt, rounding, overflow)}, {ev})"


def _input_register(e, node, x: str, size: int, register, rounding, ev: str) -> tuple[str, str, int]:
    """(code, the buffer the layer reads, its frac): iostrict's input register over the image."""
    frac = e.fracs[node.inputs[0]]
    if register is None:
        return "", x, frac
    code = (f"    static int64_t xr[{size}];\n"
            f"    for (int64_t i = 0; i < {size}; i++)\n"
            f"        xr[i] = wg_register({x}[i], {frac - register.frac_bits}, "
            f"{_register_args(register, rounding, Overflow.SAT_SYM)}, {ev});\n")
    return code, "xr", register.frac_bits


# ---- rules ---------------------------------------------------------------------------------------

@rule("conv2d", "linear")
def _mac(e, node):
    """The accumulator preloaded with the aligned bias, then the products on its grid: exact
    (any order), WRAP (the exact sum wrapped once, an event per element), or SAT (clamped after
    every addition in the declared MAC order and k_split chunks, an event per clamp)."""
    p = node.params
    registers = (["input"] if p.input_register is not None else []) + ["accumulator", "output"]
    ev = {r: f"&ev[{k}]" for k, r in enumerate(registers)}
    shape = e.shapes[node.inputs[0]]
    weight = node.arrays["weight"]
    if node.op == "linear":
        c, h, w = shape[0], 1, 1
        weight = weight[:, :, None, None]
    else:
        c, h, w = (shape[0], 1, shape[1]) if len(shape) == 2 else shape
    o, cg, kh, kw = weight.shape
    out_shape = e.shapes[node.name]
    oh, ow = (1, 1) if node.op == "linear" else ((1, out_shape[1]) if len(out_shape) == 2 else out_shape[1:])
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    code, x, fx = _input_register(e, node, "x0", c * h * w, p.input_register, p.rounding, ev.get("input"))
    bias = node.arrays.get("bias")
    frac, prod_shift = accumulator_grid(fx, p.weight_fmt, p.bias_fmt if bias is not None else None)
    bias_al = np.zeros(o, object) if bias is None else bias.astype(object) * (1 << (frac - p.bias_fmt.frac_bits))
    lo, hi = e.ranges[node.inputs[0]]
    (x_lo, x_hi), _ = input_register_range((lo, hi), e.fracs[node.inputs[0]], p.input_register, p.rounding)
    b_max = max((abs(int(v)) for v in bias_al), default=0)
    bound = multiply_bound(weight_summary(weight.reshape(o, -1)), b_max, max(-x_lo, x_hi, 0), prod_shift)
    e.check(node, bound, "a partial sum of its accumulator")
    acc = p.accumulator
    if acc.bits is not None and acc.overflow != Overflow.WRAP:
        a_lo, a_hi = -(1 << (acc.bits - 1)) + (acc.overflow == Overflow.SAT_SYM), (1 << (acc.bits - 1)) - 1
        if b_max and (min(int(v) for v in bias_al) < a_lo or max(int(v) for v in bias_al) > a_hi):
            raise CodegenError(f"node {node.name}: its aligned bias leaves its saturating accumulator")
    w_ptr = e.constant(weight.astype(np.int64) * (1 << prod_shift))  # products land on the grid
    b_ptr = e.constant(np.array([int(v) for v in bias_al], np.int64))
    og = o // p.groups
    taps = [(ci, ky, kx) for ci in range(cg) for ky in range(kh) for kx in range(kw)]
    if acc.mac_order == "kernel_major":
        taps = [(ci, ky, kx) for ky in range(kh) for kx in range(kw) for ci in range(cg)]
    saturating = acc.bits is not None and acc.overflow != Overflow.WRAP
    k_total = cg * kh * kw
    chunk = -(-k_total // acc.k_split)
    tap_list = e.constant(np.array([ci * kh * kw + ky * kw + kx for ci, ky, kx in taps], np.int64))
    fit = (f"wg_fit(v, {acc.bits}, 1, {int(acc.overflow)})" if saturating else "v")
    body = code + f"""    const int64_t *W = {w_ptr}, *B = {b_ptr}, *T = {tap_list};
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
                    int64_t v = part[t / {chunk}] + xv * w_o[k], fitted = {fit};
                    if (fitted != v) ev_acc->saturations++;
                    part[t / {chunk}] = fitted;
                }}
                for (int s = 1; s < {acc.k_split}; s++) {{  /* the chunks added in order into the first */
                    int64_t v = part[0] + part[s], fitted = {fit};
                    if (fitted != v) ev_acc->saturations++;
                    part[0] = fitted;
                }}
                int64_t a = part[0];
"""
    if acc.bits is not None and acc.overflow == Overflow.WRAP:
        body += f"""                {{ int64_t wrapped = wg_fit(a, {acc.bits}, 1, {int(Overflow.WRAP)});
                  if (wrapped != a) ev_acc->wraps++;
                  a = wrapped; }}
"""
    value = _output_register(e, node, "a", frac, p.out_fmt, p.rounding, p.out_overflow, ev["output"])
    body += f"""                int64_t at = (oc * {oh} + oy) * {ow} + ox;
                acc[at] = a;
                y[at] = {value};
            }}
    }}
"""
    body = f"    wg_events *ev_acc = {ev['accumulator']};\n" + body
    return registers, (o, oh, ow) if node.op == "conv2d" else (o,), body


@rule("activation")
def _activation(e, node):
    p = node.params
    registers = (["input"] if p.input_register is not None else []) + ["output"]
    ev = {r: f"&ev[{k}]" for k, r in enumerate(registers)}
    size = _image(e.shapes[node.inputs[0]])
    code, x, frac = _input_register(e, node, "x0", size, p.input_register, p.rounding, ev.get("input"))
    value, clamped_frac = "(x_i > 0 ? x_i : 0)", frac
    if p.ceiling is not None:  # a grid that holds the ceiling: frac >= 0
        clamped_frac = max(frac, 0)
        scale = 1 << (clamped_frac - frac)
        value = f"((x_i > 0 ? x_i : 0) * {_c_int(scale)} < {_c_int(p.ceiling << clamped_frac)} ? " \
                f"(x_i > 0 ? x_i : 0) * {_c_int(scale)} : {_c_int(p.ceiling << clamped_frac)})"
    e.check(node, e.magnitude(node.inputs[0]) << (clamped_frac - frac), "its input on the ceiling's grid")
    out = _output_register(e, node, "a", clamped_frac, p.out_fmt, p.rounding, p.overflow, ev["output"])
    return registers, None, code + f"""    for (int64_t i = 0; i < {size}; i++) {{
        int64_t x_i = {x}[i], a = {value};
        y[i] = {out};
    }}
"""


def _pool_geometry(e, node):
    c, h, w = e.shapes[node.inputs[0]]
    _, oh, ow = e.shapes[node.name]
    p = node.params
    return c, h, w, oh, ow, p.kernel, p.stride, p.padding, p.dilation


@rule("max_pool2d")
def _max_pool(e, node):
    """The maximum over each window's cells inside the input (padding is never a candidate)."""
    c, h, w, oh, ow, (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_geometry(e, node)
    return ["output"], None, f"""    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t oy = 0; oy < {oh}; oy++)
            for (int64_t ox = 0; ox < {ow}; ox++) {{
                int found = 0;
                int64_t m = 0;
                for (int64_t ky = 0; ky < {kh}; ky++)
                    for (int64_t kx = 0; kx < {kw}; kx++) {{
                        int64_t iy = oy * {sh} - {ph} + ky * {dh}, ix = ox * {sw} - {pw} + kx * {dw};
                        if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) continue;
                        int64_t v = x0[(ch * {h} + iy) * {w} + ix];
                        if (!found || v > m) m = v;
                        found = 1;
                    }}
                y[(ch * {oh} + oy) * {ow} + ox] = m;
            }}
"""


@rule("avg_pool2d")
def _avg_pool(e, node):
    """The window's sum (padding adds 0), divided by its divisor and rounded once onto the
    output grid (ties and underflows counted), then the output format's overflow (counted as
    saturations), as `pool.avg_pool2d`."""
    p = node.params
    c, h, w, oh, ow, (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_geometry(e, node)
    shift = p.out_fmt.frac_bits - e.fracs[node.inputs[0]]
    e.check(node, (e.magnitude(node.inputs[0]) * kh * kw) << max(shift, 0), "a window's sum on the output grid")
    e.check(node, (p.divisor_override or kh * kw) << max(-shift, 0), "its divisor")
    if p.divisor_override:
        divisor = f"{_c_int(p.divisor_override)}"
    elif p.count_include_pad:
        divisor = f"{_c_int(kh * kw)}"
    else:
        divisor = "cells"
    fit = ""
    if p.out_fmt.bounded:
        fit = f"""                {{ int64_t fitted = wg_fit(q, {p.out_fmt.bits}, {int(p.out_fmt.signed)}, {int(p.overflow)});
                  if (fitted != q) ev[0].saturations++;
                  q = fitted; }}
"""
    return ["output"], None, f"""    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t oy = 0; oy < {oh}; oy++)
            for (int64_t ox = 0; ox < {ow}; ox++) {{
                int64_t sum = 0, cells = 0;
                for (int64_t ky = 0; ky < {kh}; ky++)
                    for (int64_t kx = 0; kx < {kw}; kx++) {{
                        int64_t iy = oy * {sh} - {ph} + ky * {dh}, ix = ox * {sw} - {pw} + kx * {dw};
                        if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) continue;
                        sum += x0[(ch * {h} + iy) * {w} + ix];
                        cells++;
                    }}
                int tie;
                int64_t q = wg_divide_rounded(sum * {_c_int(1 << max(shift, 0))}, ({divisor}) * {_c_int(1 << max(-shift, 0))}, {int(p.rounding)}, &tie);
                ev[0].ties += tie;
                if (q == 0 && sum != 0) ev[0].underflows++;
{fit}                y[(ch * {oh} + oy) * {ow} + ox] = q;
            }}
"""


@rule("add")
def _add(e, node):
    p = node.params
    (a, b), size = node.inputs, _image(e.shapes[node.name])
    fa, fb = e.fracs[a], e.fracs[b]
    frac = max(fa, fb)
    e.check(node, (e.magnitude(a) << (frac - fa)) + (e.magnitude(b) << (frac - fb)), "the sum")
    out = _output_register(e, node, "s", frac, p.out_fmt, p.rounding, p.overflow, "&ev[0]")
    return ["output"], None, f"""    for (int64_t i = 0; i < {size}; i++) {{
        int64_t s = x0[i] * {_c_int(1 << (frac - fa))} + x1[i] * {_c_int(1 << (frac - fb))};
        y[i] = {out};
    }}
"""


@rule("flatten")
def _flatten(e, node):
    size = _image(e.shapes[node.name])
    return ["output"], None, f"    for (int64_t i = 0; i < {size}; i++) y[i] = x0[i];\n"


@rule("requantize")
def _requantize(e, node):
    p = node.params
    size = _image(e.shapes[node.name])
    e.check(node, e.magnitude(node.name), "its output")
    out = _output_register(e, node, "x0[i]", e.fracs[node.inputs[0]], p.out_fmt, p.rounding, p.overflow, "&ev[0]")
    return ["output"], None, f"    for (int64_t i = 0; i < {size}; i++) y[i] = {out};\n"


@rule("thresholds")
def _thresholds(e, node):
    """first + step * the thresholds the channel's directed value reaches (a linear count:
    the definition, section 12)."""
    p = node.params
    shape = e.shapes[node.inputs[0]]
    channels, pixels = shape[0], _image(shape[1:])
    table = clamped_to_range(node.arrays["thresholds"], *e.ranges[node.inputs[0]])
    rows, levels = table.shape
    t_ptr, s_ptr = e.constant(table), e.constant(node.arrays["signs"])
    return ["output"], None, f"""    const int64_t *T = {t_ptr}, *S = {s_ptr};
    for (int64_t ch = 0; ch < {channels}; ch++) {{
        const int64_t *row = T + {'0' if rows == 1 else f'ch * {levels}'};
        int64_t sign = S[{'0' if rows == 1 else 'ch'}];
        for (int64_t i = 0; i < {pixels}; i++) {{
            int64_t v = sign * x0[ch * {pixels} + i], count = 0;
            for (int64_t l = 0; l < {levels}; l++) count += v >= row[l];
            y[ch * {pixels} + i] = {_c_int(p.first)} + {_c_int(p.step)} * count;
        }}
    }}
"""


@rule("concat")
def _concat(e, node):
    p = node.params
    frac = max(e.fracs[i] for i in node.inputs)
    code, at = "", 0
    for k, name in enumerate(node.inputs):
        size = _image(e.shapes[name])
        e.check(node, e.magnitude(name) << (frac - e.fracs[name]), f"input {name} on the common grid")
        out = _output_register(e, node, f"x{k}[i] * {_c_int(1 << (frac - e.fracs[name]))}", frac, p.out_fmt,
                               p.rounding, p.overflow, "&ev[0]")
        code += f"    for (int64_t i = 0; i < {size}; i++) y[{at} + i] = {out};\n"
        at += size
    return ["output"], None, code


@rule("upsample")
def _upsample(e, node):
    c, h, w = e.shapes[node.inputs[0]]
    _, oh, ow = e.shapes[node.name]
    fy, fx = node.params.scale
    return ["output"], None, f"""    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t oy = 0; oy < {oh}; oy++)
            for (int64_t ox = 0; ox < {ow}; ox++)
                y[(ch * {oh} + oy) * {ow} + ox] = x0[(ch * {h} + oy / {fy}) * {w} + ox / {fx}];
"""


@rule("batchnorm2d")
def _batchnorm(e, node):
    """d = x - mean on the finer grid, xhat = round(d 2**s / std) fitted, y = xhat gamma + beta,
    then the output register (`batchnorm.batchnorm2d`)."""
    p = node.params
    registers = (["input"] if p.input_register is not None else []) + ["xhat", "output"]
    ev = {r: f"&ev[{k}]" for k, r in enumerate(registers)}
    c, h, w = e.shapes[node.inputs[0]]
    code, x, fx = _input_register(e, node, "x0", c * h * w, p.input_register, p.rounding, ev.get("input"))
    frac = max(fx, p.mean_fmt.frac_bits)
    mean = node.arrays["mean"].astype(object) * (1 << (frac - p.mean_fmt.frac_bits))
    shift = p.std_fmt.frac_bits + p.xhat_fmt.frac_bits - frac
    (x_lo, x_hi), _ = input_register_range(e.ranges[node.inputs[0]], e.fracs[node.inputs[0]], p.input_register, p.rounding)
    span = (max(-x_lo, x_hi, 0) << (frac - fx)) + max((abs(int(v)) for v in mean), default=0)
    e.check(node, span << max(shift, 0), "x - mean on the division's grid")
    e.check(node, int(node.arrays["std"].max(initial=1)) << max(-shift, 0), "its std on the division's grid")
    y_frac = p.xhat_fmt.frac_bits
    gamma = np.ones(c, object) if p.gamma_fmt is None else node.arrays["gamma"].astype(object)
    if p.gamma_fmt is not None:
        y_frac += p.gamma_fmt.frac_bits
    beta = np.zeros(c, object)
    if p.beta_fmt is not None:
        to = max(y_frac, p.beta_fmt.frac_bits)
        gamma = gamma * (1 << (to - y_frac))
        beta = node.arrays["beta"].astype(object) * (1 << (to - p.beta_fmt.frac_bits))
        y_frac = to
    xhat_bound = (span << max(shift, 0)) + 1  # |round(d / std)| with std >= 1
    if p.xhat_fmt.bounded:
        xhat_bound = min(xhat_bound, 1 << p.xhat_fmt.bits)
    e.check(node, xhat_bound * max(abs(int(g)) for g in gamma) + max(abs(int(b)) for b in beta), "xhat * gamma + beta")
    m_ptr = e.constant(np.array([int(v) for v in mean], np.int64))
    d_ptr = e.constant(node.arrays["std"].astype(np.int64) * (1 << max(-shift, 0)))
    g_ptr = e.constant(np.array([int(v) for v in gamma], np.int64))
    b_ptr = e.constant(np.array([int(v) for v in beta], np.int64))
    out = _output_register(e, node, "a", y_frac, p.out_fmt, p.rounding, p.overflow, ev["output"])
    return registers, None, code + f"""    const int64_t *M = {m_ptr}, *D = {d_ptr}, *G = {g_ptr}, *BE = {b_ptr};
    wg_events *ev_xhat = {ev['xhat']};
    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t i = 0; i < {h * w}; i++) {{
            int64_t d = ({x}[ch * {h * w} + i] * {_c_int(1 << (frac - fx))} - M[ch]) * {_c_int(1 << max(shift, 0))};
            int tie;
            int64_t q = wg_divide_rounded(d, D[ch], {int(p.rounding)}, &tie);
            int64_t xhat = wg_fit(q, {p.xhat_fmt.bits or 0}, 1, {int(p.overflow)});
            ev_xhat->ties += tie;
            if (xhat != q) {{ if ({int(p.overflow)} == WG_WRAP) ev_xhat->wraps++; else ev_xhat->saturations++; }}
            int64_t a = xhat * G[ch] + BE[ch];
            y[ch * {h * w} + i] = {out};
        }}
"""


# ---- the folder ----------------------------------------------------------------------------------

def generate_c(graph, embed: bool = False) -> dict:
    """{relative path: bytes} of the C model of ``graph`` (CodegenError names what it cannot
    compute). The same graph gives the same bytes."""
    graph = graph.check()
    e = _Emitter(graph)
    layers, buffers = [], {graph.inputs[0].name: "in"}
    for k, node in enumerate(graph.nodes):
        if node.op not in RULES:
            raise CodegenError(f"node {node.name} ({node.op}): the C model has no rule for {node.op} "
                               f"yet; it generates {', '.join(sorted(RULES))}")
        registers, acc_shape, body = RULES[node.op](e, node)
        layers.append(_Layer(k, node.name, node.op, [buffers[i] for i in node.inputs], registers,
                             e.shapes[node.name], acc_shape, body))
        buffers[node.name] = f"out[{k}]"
    out_index = [n.name for n in graph.nodes].index(graph.outputs[0])
    params = np.concatenate(e.params) if e.params else np.zeros(0, np.int64)
    blob = params.astype("<i8").tobytes()
    crc = zlib.crc32(blob) & 0xFFFFFFFF
    files = {"wageubn_fixed.h": (RUNTIME / "wageubn_fixed.h").read_bytes(),
             "golden_main.c": (RUNTIME / "golden_main.c").read_bytes(),
             "Makefile": (RUNTIME / "Makefile").read_bytes(),
             "model.h": _model_h(graph, layers, out_index, params.size, crc).encode(),
             "model.c": _model_c(graph, layers).encode()}
    if embed:
        values = ",\n".join(", ".join(_c_int(v) for v in params[i:i + 8]) for i in range(0, params.size, 8))
        files["model_params.c"] = ("/* the parameters, compiled in (codegen --embed) */\n#include \"model.h\"\n"
                                   f"const int64_t WG_EMBEDDED_PARAMS[{max(params.size, 1)}] = {{\n{values or '0'}\n}};\n").encode()
    else:
        files["params.bin"] = blob
        files["model_params.c"] = b"/* the parameters are read from params.bin (wg_init) */\n#include \"model.h\"\nconst int64_t *const WG_EMBEDDED_PARAMS = 0;\n"
    files["layers.json"] = (json.dumps({"generator": f"wageubn-sim {__version__}", "embedded": embed,
                                        "layers": [{"name": l.name, "folder": file_safe(l.name), "op": l.op,
                                                    "shape": list(l.shape), "registers": l.registers,
                                                    "accumulator": list(l.accumulator) if l.accumulator else None}
                                                   for l in layers]}, indent=1) + "\n").encode()
    return files


def _model_h(graph, layers, out_index, n_params, crc) -> str:
    spec = graph.inputs[0]
    rows = []
    for l in layers:
        names = ", ".join(f'"{r}"' for r in l.registers)
        acc = _image(l.accumulator) if l.accumulator else 0
        shape = ", ".join(str(d) for d in l.shape)
        rows.append(f'    {{"{_c_string(l.name)}", "{_c_string(file_safe(l.name))}", "{l.op}", {len(l.shape)}, '
                    f'{{{shape}}}, {_image(l.shape)}, {acc}, {len(l.registers)}, {{{names}}}}}')
    in_shape = ", ".join(str(d) for d in spec.shape)
    return f"""/* model.h: the golden model of one graph (generated by wageubn-sim {__version__} codegen;
 * docs/arithmetic.md is its contract). Values are the integers of each tensor's format, image by
 * image, in C order (the engine's NCHW without the batch axis). */
#ifndef WG_MODEL_H
#define WG_MODEL_H
#include <stdint.h>
#include "wageubn_fixed.h"

#define WG_LAYERS {len(layers)}
#define WG_OUTPUT_LAYER {out_index}
#define WG_PARAM_COUNT {n_params}
#define WG_PARAM_CRC32 UINT32_C(0x{crc:08x})
#define WG_INPUT_RANK {len(spec.shape)}
#define WG_INPUT_SIZE {_image(spec.shape)}
static const int64_t WG_INPUT_SHAPE[{max(len(spec.shape), 1)}] = {{{in_shape}}};

typedef struct {{
    const char *name, *folder, *op;
    int rank;
    int64_t shape[4];  /* without the batch axis */
    int64_t size, accumulator_size;  /* values per image; 0: no accumulator tap */
    int registers;
    const char *register_names[3];  /* the engine's, in its order */
}} wg_layer_info;

static const wg_layer_info WG_LAYER_INFO[WG_LAYERS] = {{
{(','.join(chr(10) + r for r in rows)).lstrip(chr(10))}
}};

extern const int64_t *const WG_EMBEDDED_PARAMS;  /* 0 unless compiled in (codegen --embed) */

/* Load and check the parameters (params.bin: WG_PARAM_COUNT little-endian int64, CRC-32
 * WG_PARAM_CRC32); 0 when they are good, else -1 with a message in err. Embedded ones need no
 * path. */
int wg_init(const char *params_path, char *err, int err_size);

/* Free what wg_init loaded. */
void wg_release(void);

/* One image through every layer: out[k] receives layer k's output (WG_LAYER_INFO[k].size
 * values), acc[k] its accumulator where it has one (else it may be 0), ev[k][r] adds the events
 * of its register r. */
void wg_run_image(const int64_t *in, int64_t *const *out, int64_t *const *acc, wg_events (*ev)[3]);

#endif
"""


def _c_string(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _model_c(graph, layers) -> str:
    parts = [f"""/* model.c: the layers of graph "{_c_string(graph.inputs[0].name)} -> {_c_string(graph.outputs[0])}"
 * (generated by wageubn-sim {__version__} codegen). Each layer: its exact integer computation,
 * then its registers (wg_register: section 4), events counted as the engine counts them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

static const int64_t *WG_P;
"""]
    for l in layers:
        args = ", ".join(f"const int64_t *x{k}" for k in range(len(l.inputs)))
        parts.append(f"""
/* layer {l.index}: {_c_string(l.name)} ({l.op}) */
static void layer_{l.index}({args}, int64_t *acc, int64_t *y, wg_events *ev) {{
    (void)acc; (void)ev;
{l.body}}}
""")
    calls = "\n".join(f"    layer_{l.index}({', '.join(l.inputs)}, acc[{l.index}], out[{l.index}], ev[{l.index}]);"
                      for l in layers)
    parts.append(f"""
void wg_run_image(const int64_t *in, int64_t *const *out, int64_t *const *acc, wg_events (*ev)[3]) {{
{calls}
}}

static uint32_t wg_crc32(const unsigned char *data, size_t n) {{  /* CRC-32 (IEEE 802.3), bit by bit */
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {{
        crc ^= data[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }}
    return crc ^ 0xFFFFFFFFu;
}}

static int64_t *loaded;

void wg_release(void) {{
    free(loaded);
    loaded = 0;
    WG_P = 0;
}}

int wg_init(const char *params_path, char *err, int err_size) {{
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1) {{
        snprintf(err, (size_t)err_size, "this host is big-endian; params.bin holds little-endian int64");
        return -1;
    }}
    if (WG_EMBEDDED_PARAMS) {{ WG_P = WG_EMBEDDED_PARAMS; return 0; }}
    FILE *f = fopen(params_path, "rb");
    if (!f) {{ snprintf(err, (size_t)err_size, "cannot open %s", params_path); return -1; }}
    size_t bytes = (size_t)WG_PARAM_COUNT * 8u;
    free(loaded);
    loaded = malloc(bytes ? bytes : 8u);
    size_t got = loaded ? fread(loaded, 1, bytes, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (!loaded || got != bytes || extra) {{
        snprintf(err, (size_t)err_size, "%s holds %s bytes than the %lu this model needs; write it again "
                 "with wageubn-sim codegen", params_path, got < bytes ? "fewer" : "more", (unsigned long)bytes);
        return -1;
    }}
    if (wg_crc32((const unsigned char *)loaded, bytes) != WG_PARAM_CRC32) {{
        snprintf(err, (size_t)err_size, "%s: its CRC-32 is not this model's; it belongs to another graph "
                 "or was changed", params_path);
        return -1;
    }}
    WG_P = loaded;
    return 0;
}}
""")
    return "".join(parts)
