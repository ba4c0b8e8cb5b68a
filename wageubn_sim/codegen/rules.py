"""The C model's rules: each op is one rule in ``RULES`` (keyed by op name, as the exporter's): the layer's exact
computation in int64, then its registers through `wg_register`, in the order and with the event
counts of the engine's kernel (docs/arithmetic.md sections 2 to 4, 9 and 13). Every value a
layer forms is bounded before it is formed: from the graph's static ranges when the code is
written, else by a check of each image's input (`Emitter.guard`) that refuses it where the
engine refuses it too, so the C code never overflows (no undefined behaviour); an op without a
rule is refused with the node named. The MAC layers' rules are in `mac.py`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from ..engine.ops.thresholds import clamped_to_range
from ..engine.ranges import input_register_range
from ..execution.ranges import value_ranges
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.scalar import DOMAIN_LIMIT

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


def c_int(v: int) -> str:
    """An int64 literal, the most negative one written without overflow."""
    v = int(v)
    return f"(-INT64_C({-(v + 1)}) - 1)" if v < 0 else f"INT64_C({v})"


def _register_args(fmt: Format, rounding, overflow) -> str:
    """wg_register's (bits, signed, rounding, overflow) of a format and its modes."""
    return f"{fmt.bits or 0}, {int(fmt.signed)}, {int(Rounding(rounding))}, {int(Overflow(overflow))}"


@dataclasses.dataclass
class Layer:
    index: int
    name: str
    op: str
    inputs: list  # C buffer names of its inputs
    registers: list  # the engine's register names, in its order
    shape: tuple
    accumulator: tuple | None  # the accumulator tap's shape (MAC layers)
    body: str


class Emitter:
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

    def input_magnitude(self, node) -> int:
        """The static magnitude of a layer's input as the layer reads it: after its input
        register (iostrict), where it has one."""
        p = node.params
        (lo, hi), _ = input_register_range(self.ranges[node.inputs[0]], self.fracs[node.inputs[0]],
                                           p.input_register, p.rounding)
        return max(-lo, hi, 0)

    def guard(self, node, x: str, size: int, static: int, fits, what: str) -> tuple[str, int]:
        """(C code, the input magnitude the layer's arithmetic is proven for): nothing where
        ``fits(static)`` holds for the static range's magnitude ``static``; else a check of each
        image's input ``x`` (``size`` values) against the largest magnitude m with ``fits(m)``,
        refusing one beyond it at run time, where the engine (which checks its actual
        values) refuses it too."""
        if fits(static):
            return "", static
        if not fits(0):
            raise CodegenError(f"node {node.name} ({node.op}): {what} leaves the 62-bit domain for "
                               "any input")
        lo, hi = 0, static
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return f"""    for (int64_t i = 0; i < {size}; i++)
        if ({x}[i] > {c_int(lo)} || {x}[i] < -{c_int(lo)}) {{
            wg_error = "layer {c_string(node.name)}: its input reaches beyond {lo}, where {what} leaves the 62-bit domain (the engine refuses it too)";
            return;
        }}
""", lo

    def check(self, node, magnitude: int, what: str) -> None:
        if magnitude >= DOMAIN_LIMIT:
            raise CodegenError(f"node {node.name} ({node.op}): {what} may reach 2**{magnitude.bit_length() - 1}, "
                               "beyond the 62-bit domain the C model computes in; give the input a "
                               "narrower format or the accumulator a width")


def c_string(s: str) -> str:
    """A C string literal's contents (and safe in a comment): printable ASCII as it is but for
    quote, backslash and the comment's end, every other byte of its UTF-8 in octal."""
    out = []
    for byte in s.encode():
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\*' else f"\\{byte:03o}")
    return "".join(out)


def image_size(shape) -> int:
    return int(math.prod(shape))


def output_register(e, node, value: str, frac: int, fmt, rounding, overflow, ev: str) -> str:
    """The C expression of ``value`` (at 2**-frac) moved into its output register (None: as it is)."""
    if fmt is None:
        return value
    return f"wg_register({value}, {frac - fmt.frac_bits}, {_register_args(fmt, rounding, overflow)}, {ev})"


def registers(node, *names) -> tuple[list, dict]:
    """A layer's registers as the engine names them, iostrict's input register first where the
    layer has one, and each one's events in the layer's C function (``&ev[k]``)."""
    names = (["input"] if getattr(node.params, "input_register", None) is not None else []) + list(names)
    return names, {r: f"&ev[{k}]" for k, r in enumerate(names)}


def input_register(e, node, x: str, size: int, register, rounding, ev: str) -> tuple[str, str, int]:
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

@rule("activation")
def _activation(e, node):
    p = node.params
    names, ev = registers(node, "output")
    size = image_size(e.shapes[node.inputs[0]])
    code, x, frac = input_register(e, node, "x0", size, p.input_register, p.rounding, ev.get("input"))
    value, clamped_frac = "(x_i > 0 ? x_i : 0)", frac
    if p.ceiling is not None:  # a grid that holds the ceiling (frac >= 0): the only arithmetic
        clamped_frac = max(frac, 0)
        scale = 1 << (clamped_frac - frac)
        value = f"((x_i > 0 ? x_i : 0) * {c_int(scale)} < {c_int(p.ceiling << clamped_frac)} ? " \
                f"(x_i > 0 ? x_i : 0) * {c_int(scale)} : {c_int(p.ceiling << clamped_frac)})"
        e.check(node, p.ceiling << clamped_frac, "its ceiling on its grid")
        guard, _ = e.guard(node, x, size, e.magnitude(node.inputs[0]),
                           lambda m: m << (clamped_frac - frac) < DOMAIN_LIMIT, "its input on the ceiling's grid")
        code += guard
    out = output_register(e, node, "a", clamped_frac, p.out_fmt, p.rounding, p.overflow, ev["output"])
    return names, None, code + f"""    for (int64_t i = 0; i < {size}; i++) {{
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
    guard, _ = e.guard(node, "x0", c * h * w, e.magnitude(node.inputs[0]),
                       lambda m: (m * kh * kw) << max(shift, 0) < DOMAIN_LIMIT, "a window's sum on the output grid")
    e.check(node, (p.divisor_override or kh * kw) << max(-shift, 0), "its divisor")
    if p.divisor_override:
        divisor = f"{c_int(p.divisor_override)}"
    elif p.count_include_pad:
        divisor = f"{c_int(kh * kw)}"
    else:
        divisor = "cells"
    fit = ""
    if p.out_fmt.bounded:
        fit = f"""                {{ int64_t fitted = wg_fit(q, {p.out_fmt.bits}, {int(p.out_fmt.signed)}, {int(p.overflow)});
                  if (fitted != q) ev[0].saturations++;
                  q = fitted; }}
"""
    return ["output"], None, guard + f"""    for (int64_t ch = 0; ch < {c}; ch++)
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
                int64_t q = wg_divide_rounded(sum * {c_int(1 << max(shift, 0))}, ({divisor}) * {c_int(1 << max(-shift, 0))}, {int(p.rounding)}, &tie);
                ev[0].ties += tie;
                if (q == 0 && sum != 0) ev[0].underflows++;
{fit}                y[(ch * {oh} + oy) * {ow} + ox] = q;
            }}
"""


@rule("add")
def _add(e, node):
    p = node.params
    (a, b), size = node.inputs, image_size(e.shapes[node.name])
    fa, fb = e.fracs[a], e.fracs[b]
    frac = max(fa, fb)
    guards = "".join(e.guard(node, buf, size, e.magnitude(name), lambda m, f=f: m << (frac - f) < DOMAIN_LIMIT,
                             "its operand on the common grid")[0]
                     for buf, name, f in (("x0", a, fa), ("x1", b, fb)))  # each below 2**61: the sum fits int64
    out = output_register(e, node, "s", frac, p.out_fmt, p.rounding, p.overflow, "&ev[0]")
    return ["output"], None, guards + f"""    for (int64_t i = 0; i < {size}; i++) {{
        int64_t s = x0[i] * {c_int(1 << (frac - fa))} + x1[i] * {c_int(1 << (frac - fb))};
        y[i] = {out};
    }}
"""


@rule("flatten")
def _flatten(e, node):
    size = image_size(e.shapes[node.name])
    return ["output"], None, f"    for (int64_t i = 0; i < {size}; i++) y[i] = x0[i];\n"


@rule("requantize")
def _requantize(e, node):
    p = node.params
    size = image_size(e.shapes[node.name])
    e.check(node, e.magnitude(node.name), "its output")
    out = output_register(e, node, "x0[i]", e.fracs[node.inputs[0]], p.out_fmt, p.rounding, p.overflow, "&ev[0]")
    return ["output"], None, f"    for (int64_t i = 0; i < {size}; i++) y[i] = {out};\n"


@rule("thresholds")
def _thresholds(e, node):
    """first + step * the thresholds the channel's directed value reaches (a linear count:
    the definition, section 12)."""
    p = node.params
    shape = e.shapes[node.inputs[0]]
    channels, pixels = shape[0], image_size(shape[1:])
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
            y[ch * {pixels} + i] = {c_int(p.first)} + {c_int(p.step)} * count;
        }}
    }}
"""


@rule("concat")
def _concat(e, node):
    p = node.params
    frac = max(e.fracs[i] for i in node.inputs)
    code, at = "", 0
    for k, name in enumerate(node.inputs):
        size = image_size(e.shapes[name])
        code += e.guard(node, f"x{k}", size, e.magnitude(name),
                        lambda m, f=e.fracs[name]: m << (frac - f) < DOMAIN_LIMIT, "its input on the common grid")[0]
        out = output_register(e, node, f"x{k}[i] * {c_int(1 << (frac - e.fracs[name]))}", frac, p.out_fmt,
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


@rule("rescale")
def _rescale(e, node):
    """A fixed-point multiplier per channel (`rescale.rescale`): single, y = R((x M + O) / 2**s)
    then the overflow; double, TFLite's SRDHM then RDBP plus the zero point; a clamp to the
    levels after either. Its events: overflows (wraps or saturations) and ties, no underflows."""
    p = node.params
    shape = e.shapes[node.inputs[0]]
    channels, pixels = shape[0], image_size(shape[1:])
    m, o, sh = (node.arrays[k].astype(np.int64) for k in ("multiplier", "offset", "shift"))
    at = "0" if m.size == 1 else "ch"
    low, high = p.levels
    fmt = p.out_fmt
    if (p.mode == "single" and sh.size and (sh.min() < 0 or sh.max() > 62)) or (p.mode == "double" and sh.size and (
            sh.min() < -31 or sh.max() > 31 or m.min() < 0 or m.max() > (1 << 31) - 1)):
        raise CodegenError(f"node {node.name} (rescale): shifts or multipliers outside the {p.mode} mode's "
                           "(the engine refuses them too)")
    if p.mode == "single":
        m_max, o_max = int(np.abs(m).max(initial=0)), int(np.abs(o).max(initial=0))
        guard, _ = e.guard(node, "x0", channels * pixels, e.magnitude(node.inputs[0]),
                           lambda v: v * m_max + o_max < DOMAIN_LIMIT, "x * M + O")
        value = f"""            int tie;
            int64_t v = x0[ch * {pixels} + i] * M[{at}] + O[{at}];
            int64_t rounded = wg_shift_right_rounded(v, (int)S[{at}], {int(p.rounding)}, &tie);
            int64_t r = wg_fit(rounded, {fmt.bits}, {int(fmt.signed)}, {int(p.overflow)});
            ev[0].ties += tie;
"""
    else:
        left = max(-int(sh.min(initial=0)), 0)
        guard, _ = e.guard(node, "x0", channels * pixels, e.magnitude(node.inputs[0]),
                           lambda v: v << left <= (1 << 31) - 1, "TFLite's int32 accumulator (shifted left)")
        value = f"""            int64_t s = S[{at}], left = s < 0 ? -s : 0, right = s > 0 ? s : 0;
            int64_t upper = wg_saturating_rounding_doubling_high_mul(x0[ch * {pixels} + i] * ((int64_t)1 << left), M[{at}]);
            int64_t rounded = wg_rounding_divide_by_pot(upper, (int)right) + O[{at}];
            int64_t r = wg_fit(rounded, {fmt.bits}, {int(fmt.signed)}, {int(p.overflow)});
"""
    return ["output"], None, guard + f"""    const int64_t *M = {e.constant(m)}, *O = {e.constant(o)}, *S = {e.constant(sh)};
    for (int64_t ch = 0; ch < {channels}; ch++)
        for (int64_t i = 0; i < {pixels}; i++) {{
{value}            if (r != rounded) {{ if ({int(p.overflow)} == WG_WRAP) ev[0].wraps++; else ev[0].saturations++; }}
            y[ch * {pixels} + i] = r < {c_int(low)} ? {c_int(low)} : (r > {c_int(high)} ? {c_int(high)} : r);
        }}
"""


@rule("batchnorm2d")
def _batchnorm(e, node):
    """d = x - mean on the finer grid, xhat = round(d 2**s / std) fitted, y = xhat gamma + beta,
    then the output register (`batchnorm.batchnorm2d`)."""
    p = node.params
    names, ev = registers(node, "xhat", "output")
    c, h, w = e.shapes[node.inputs[0]]
    code, x, fx = input_register(e, node, "x0", c * h * w, p.input_register, p.rounding, ev.get("input"))
    frac = max(fx, p.mean_fmt.frac_bits)
    mean = node.arrays["mean"].astype(object) * (1 << (frac - p.mean_fmt.frac_bits))
    shift = p.std_fmt.frac_bits + p.xhat_fmt.frac_bits - frac
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
    divisors = [int(d) << max(-shift, 0) for d in node.arrays["std"]]
    mean_max = max((abs(int(v)) for v in mean), default=0)

    def fits(m: int) -> bool:
        """Whether every value the layer forms stays in the domain for inputs |x| <= m."""
        span = ((m << (frac - fx)) + mean_max) << max(shift, 0)
        affine = 0
        for d, g, b in zip(divisors, gamma, beta):  # per channel: |xhat| <= span / std + 1, or its format's
            xhat = span // d + 1
            if p.xhat_fmt.bounded:
                xhat = min(xhat, 1 << p.xhat_fmt.bits)
            affine = max(affine, xhat * abs(int(g)) + abs(int(b)))
        return span < DOMAIN_LIMIT and affine < DOMAIN_LIMIT

    guard, _ = e.guard(node, x, c * h * w, e.input_magnitude(node), fits, "the normalisation")
    m_ptr = e.constant(np.array([int(v) for v in mean], np.int64))
    d_ptr = e.constant(node.arrays["std"].astype(np.int64) * (1 << max(-shift, 0)))
    g_ptr = e.constant(np.array([int(v) for v in gamma], np.int64))
    b_ptr = e.constant(np.array([int(v) for v in beta], np.int64))
    out = output_register(e, node, "a", y_frac, p.out_fmt, p.rounding, p.overflow, ev["output"])
    return names, None, code + guard + f"""    const int64_t *M = {m_ptr}, *D = {d_ptr}, *G = {g_ptr}, *BE = {b_ptr};
    wg_events *ev_xhat = {ev['xhat']};
    for (int64_t ch = 0; ch < {c}; ch++)
        for (int64_t i = 0; i < {h * w}; i++) {{
            int64_t d = ({x}[ch * {h * w} + i] * {c_int(1 << (frac - fx))} - M[ch]) * {c_int(1 << max(shift, 0))};
            int tie;
            int64_t q = wg_divide_rounded(d, D[ch], {int(p.rounding)}, &tie);
            int64_t xhat = wg_fit(q, {p.xhat_fmt.bits or 0}, 1, {int(p.overflow)});
            ev_xhat->ties += tie;
            if (xhat != q) {{ if ({int(p.overflow)} == WG_WRAP) ev_xhat->wraps++; else ev_xhat->saturations++; }}
            int64_t a = xhat * G[ch] + BE[ch];
            y[ch * {h * w} + i] = {out};
        }}
"""


