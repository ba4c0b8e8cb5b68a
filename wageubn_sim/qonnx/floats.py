"""Float scales in the import (docs/arithmetic.md section 12): a float-scale Quant of a constant
becomes its integers and their scales; a float value between two integer tensors (a float scale,
a float bias, a float BatchNormalization, Mul/Add/Sub/Div by constants, Relu/Clip) is a
`FloatChain` that the next Quant ends, as a thresholds layer computed exactly; a float chain
before the network's first Quant becomes the input's own quantization (`graph.ir.InputLevels`).
The handlers call these where they meet a float part."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..engine.ops.thresholds import ThresholdsParams
from ..fixedpoint.chains import (Affine, Clamp, Normalize, Quantizer, float_thresholds,
                                float_thresholds_of_reals, thresholds, thresholds_of_reals)
from ..fixedpoint.format import Format
from ..fixedpoint.floats import quantize
from ..fixedpoint.modes import Overflow
from ..fixedpoint.reference import round_fraction
from ..fixedpoint.scalar import DOMAIN_LIMIT
from ..graph.ir import InputLevels, Node
from .protocol import RESCALE
from .reader import UnsupportedModel, marks
from .values import FloatChain, QConst, Tensor

MAX_THRESHOLD_BITS = 8  # wider outputs have too many levels per channel for a comparator table
DEFAULT_MULTIPLIER_BITS = 16  # a wider output's multipliers, unless --rescale says otherwise
MAX_SHIFT = 62


def parse_rescale(text: str | None) -> int | None:
    """``thresholds`` (None: thresholds up to 8 output bits, multipliers beyond) or
    ``multiplier:BITS`` (BITS 2..32): the multiplier width, or None."""
    if text is None or text == "thresholds":
        return None
    kind, _, bits = text.partition(":")
    if kind != "multiplier" or not bits.isdigit() or not 2 <= int(bits) <= 32:
        raise ValueError(f"rescale {text!r}: give thresholds or multiplier:BITS (BITS 2..32)")
    return int(bits)


def power_of_two(value: Fraction) -> int | None:
    """f where value == 2**-f, else None."""
    if value <= 0:
        return None
    n, d = value.numerator, value.denominator
    if n == 1 and d & (d - 1) == 0:
        return d.bit_length() - 1
    if d == 1 and n & (n - 1) == 0:
        return -(n.bit_length() - 1)
    return None


def scales(imp, name, where, channels: int | None) -> tuple:
    """A Quant's scale as exact fractions: one, or one per channel (``channels`` on axis 1 of a
    network value, None: any count, for a constant's axis 0)."""
    scale = imp.const(name, where, "scale").astype(np.float64)
    if scale.size == 0 or np.any(scale <= 0):
        raise UnsupportedModel(f"{where}: a scale that is not positive (or none); a Quant's scale "
                               "is a positive float")
    values = tuple(Fraction(float(v)) for v in np.unique(scale.ravel()))
    if len(values) == 1:
        return values
    flat = scale.ravel()
    if channels is not None and (flat.size != channels or scale.ndim < 1 or
                                 max(scale.shape) != channels):
        raise UnsupportedModel(f"{where}: scales of shape {scale.shape}; one, or one per channel "
                               f"({channels})")
    return tuple(Fraction(float(v)) for v in flat)


def float_scaled(imp, name) -> bool:
    """Whether the ONNX value ``name`` is a float value: a pending chain, or integers with float
    scales."""
    return name in imp.chains or (name in imp.tensors and imp.tensors[name].scale is not None)


def quantize_float_const(imp, node, where) -> QConst:
    """A Quant of a constant with float scales (one, or one per output channel on axis 0): each
    element's integer round(x / scale), exactly (float64 decides where it is far from a rounding
    boundary; the rest are decided in exact rationals)."""
    signed, overflow, rounding, bits = imp.quantizer(node, where)
    x = imp.const(node.input[0], where, "input").astype(np.float64)
    s = imp.const(node.input[1], where, "scale").astype(np.float64)
    if s.size not in (1, x.shape[0] if x.ndim else 1) or np.any(s <= 0):
        raise UnsupportedModel(f"{where}: scales of shape {s.shape} for a constant of shape "
                               f"{x.shape}; positive, one or one per output channel (axis 0)")
    per = s.reshape(-1)
    row = per if per.size == 1 else per.reshape((-1,) + (1,) * (x.ndim - 1))
    v = x / row  # within an ulp of the exact ratio
    near = np.abs(v - np.floor(v) - 0.5) < 1e-9 * (1 + np.abs(v))
    near |= np.abs(v - np.round(v)) < 1e-9 * (1 + np.abs(v))
    exact = v.copy()
    flat_rows = np.broadcast_to(row, x.shape).reshape(-1)
    for k in np.flatnonzero(near.reshape(-1)):  # the few close to a boundary, exactly
        ratio = Fraction(float(x.reshape(-1)[k])) / Fraction(float(flat_rows[k]))
        exact.reshape(-1)[k] = float(round_fraction(ratio, rounding))
    try:
        q = quantize(exact, Format(bits, 0, signed), rounding, overflow)
    except (ValueError, OverflowError) as err:
        raise UnsupportedModel(f"{where}: {err}") from None
    return QConst(q, Format(bits, 0, signed), tuple(Fraction(float(v)) for v in per))


# ---- chains -------------------------------------------------------------------------------------

def chain_of(imp, name, where) -> FloatChain:
    """The float chain ``name`` is, or a new one from the integer tensor ``name``."""
    if name in imp.chains:
        return imp.chains.pop(name)
    imp.flush_pending(name)
    t = imp.tensor(name, where, scaled=True)
    return FloatChain(t, [Affine(t.unit(), (0,))], t.shape[0] if t.shape else 1, t.shape, [])


def extend(imp, node, name, where, stage):
    """The float value ``node`` computes from ``name`` through ``stage``."""
    chain = chain_of(imp, name, where)
    imp.chains[node.output[0]] = FloatChain(chain.source, chain.stages + [stage], chain.channels,
                                            chain.shape, chain.nodes + [node.name or node.op_type])


def per_channel(imp, name, where, channels: int, role: str) -> tuple:
    """A float constant as exact fractions: one, or one per channel (shape (C,), (C,1,1),
    (1,C,1,1) or (1,C))."""
    c = imp.const(name, where, role).astype(np.float64)
    if c.size == 1:
        return (Fraction(float(c.ravel()[0])),)
    shape = tuple(d for d in c.shape if d != 1)
    if c.size != channels or shape != (channels,) or (c.ndim >= 2 and c.shape[1 if c.ndim in (2, 4) else 0] != channels):
        raise UnsupportedModel(f"{where}: its {role} of shape {c.shape}: one value, or one per "
                               f"channel ({channels}) on axis 1")
    return tuple(Fraction(float(v)) for v in c.ravel())


def channels_of(imp, name) -> int:
    """The channel count of the ONNX value ``name`` (a chain's, or a tensor's axis 1)."""
    if name in imp.chains:
        return imp.chains[name].channels
    t = imp.tensors.get(name)
    return t.shape[0] if t is not None and t.shape else 1


def extend_affine(imp, node, x, where, a=None, b=None):
    """x * a + b by constants (None: 1, 0) in the chain of ``x``."""
    extend(imp, node, x, where, Affine(a or (1,), b or (0,)))


def normalize(imp, node, where, x, gamma, beta, mean, var, eps):
    """A float BatchNormalization in the chain: var + eps exactly, its square root kept exact."""
    extend(imp, node, x, where, Normalize(mean, gamma, beta, tuple(v + eps for v in var)))


def clamp(imp, node, where, x, lo, hi):
    extend(imp, node, x, where, Clamp(lo, hi))


def quantizer(imp, i, q, where, channels) -> tuple:
    """(Quantizer, output Format, output float scales or None) of the Quant ``q`` ending a chain."""
    signed, overflow, rounding, bits = imp.quantizer(q, where)
    s = scales(imp, q.input[1], where, channels)
    f = power_of_two(s[0]) if len(s) == 1 else None
    fmt = Format(bits, f if f is not None else 0, signed)
    q_min = fmt.min_int + (overflow == Overflow.SAT_SYM)  # narrow: the symmetric range
    return Quantizer(s, (0,), q_min, fmt.max_int, rounding), fmt, None if f is not None else s


def end(imp, i, q, where):
    """The Quant ``q`` ends the float chain it reads: a thresholds layer (the input's own
    quantization where the chain starts at the float input)."""
    try:
        _end(imp, i, q, where)
    except ValueError as err:  # what the exact arithmetic cannot do (two square roots, ...)
        if isinstance(err, UnsupportedModel):
            raise
        raise UnsupportedModel(f"{where}: {err}") from None


def _end(imp, i, q, where):
    x = q.input[0]
    chain = chain_of(imp, x, where)
    quant, fmt, out_scale = quantizer(imp, i, q, where, chain.channels)
    rows = chain.channels if _per_channel(chain.stages, quant) else 1
    levels = quant.q_max - quant.q_min
    if chain.source is None:  # the network's float input
        return _input_levels(imp, q, fmt, quant.q_min, out_scale,
                             [float_thresholds(chain.stages, quant, r) for r in range(rows)])
    names = " -> ".join(chain.nodes + [q.name or q.op_type])
    marked = [m[len(RESCALE):] for m in marks(q) if m.startswith(RESCALE) and m[len(RESCALE):].isdigit()]
    bits = imp.rescale_bits or (int(marked[0]) if marked else None) or \
        (DEFAULT_MULTIPLIER_BITS if fmt.bits > MAX_THRESHOLD_BITS else None)  # an export's multipliers come back
    if bits is not None:
        return _multipliers(imp, i, q, where, chain, quant, fmt, out_scale, bits, names)
    # clamped to the domain: every integer in it compares the same
    rows_of = [thresholds(chain.stages, quant, r, -DOMAIN_LIMIT, DOMAIN_LIMIT - 1) for r in range(rows)]
    _thresholds_layer(imp, i, q, where, chain, rows_of, levels, quant.q_min, fmt, out_scale,
                      "float chain as exact thresholds")


def _thresholds_layer(imp, i, node, where, chain, rows_of, levels, first, fmt, scale, label):
    """The thresholds layer on ``chain``'s integer source, its rows [(direction, thresholds)]."""
    src = chain.source
    names = " -> ".join(chain.nodes + [node.name or node.op_type])
    layer = Node(imp.unique(i, node), "thresholds", [src.value], ThresholdsParams(fmt, first, src.frac),
                 {"thresholds": np.array([t for _, t in rows_of], np.int64).reshape(len(rows_of), levels),
                  "signs": np.array([s for s, _ in rows_of], np.int64)}, f"onnx {names} ({label})")
    imp.emit(layer, node.output[0], where, scale=scale)


def _input_levels(imp, q, fmt, first, out_scale, table):
    """The network's float input quantized by ``table`` [(direction, float64 thresholds)] per
    row: the graph input's levels and format."""
    imp.input.fmt = fmt
    imp.input.levels = InputLevels(first, tuple(s for s, _ in table), tuple(tuple(t) for _, t in table))
    name = imp.input.name
    imp.value_fracs[name] = fmt.frac_bits
    imp.tensors[q.output[0]] = Tensor(name, imp.input.shape, fmt.frac_bits, out_scale)


def multithreshold(imp, i, node, where, table, dtype: str, out_scale: Fraction, out_bias: Fraction):
    """A MultiThreshold on the value ``node.input[0]`` (integers, or a float chain): each
    threshold pulled back to the integers exactly; the output first + count on out_scale's grid
    (a power of two; else a float scale), with first = out_bias / out_scale an integer."""
    bits, signed = _datatype(dtype, where)
    chain = chain_of(imp, node.input[0], where)
    table = np.asarray(table, np.float64)
    if table.ndim != 2 or table.shape[0] not in (1, chain.channels):
        raise UnsupportedModel(f"{where}: thresholds of shape {table.shape}; (1 or {chain.channels}, levels)")
    if out_scale <= 0 or (out_bias / out_scale).denominator != 1:
        raise UnsupportedModel(f"{where}: out_bias {float(out_bias)} is not a whole number of out_scale "
                               f"{float(out_scale)} (or out_scale is not positive)")
    first = int(out_bias / out_scale)
    f = power_of_two(out_scale)
    fmt = Format(bits, f if f is not None else 0, signed)
    if not fmt.min_int <= first or first + table.shape[1] > fmt.max_int:
        raise UnsupportedModel(f"{where}: levels {first}..{first + table.shape[1]} leave out_dtype {dtype}")
    rows = table.shape[0] if table.shape[0] > 1 or not _per_channel(chain.stages, None) else chain.channels
    at = lambda r: table[r if table.shape[0] > 1 else 0].tolist()
    scale = None if f is not None else (out_scale,)
    if chain.source is None:  # on the network's float input: its quantization
        return _input_levels(imp, node, fmt, first, scale,
                             [float_thresholds_of_reals(chain.stages, r, at(r)) for r in range(rows)])
    rows_of = [thresholds_of_reals(chain.stages, r, at(r), -DOMAIN_LIMIT, DOMAIN_LIMIT - 1) for r in range(rows)]
    _thresholds_layer(imp, i, node, where, chain, rows_of, table.shape[1], first, fmt, scale, "thresholds, exact")


def _datatype(name: str, where) -> tuple:
    """(bits, signed) of a qonnx DataType name (INTn, UINTn, BINARY)."""
    if name == "BINARY":
        return 1, False
    for prefix, signed in (("UINT", False), ("INT", True)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            bits = int(name[len(prefix):])
            if (2 if signed else 1) <= bits <= 32:
                return bits, signed
    raise UnsupportedModel(f"{where}: out_dtype {name!r}; INTn, UINTn or BINARY (integers up to 32 bits)")


def _multipliers(imp, i, q, where, chain, quant, fmt, out_scale, bits, names):
    """The chain as a fixed-point multiplier per channel (`engine.ops.rescale`, single rounding
    by the Quant's own mode): y = A x + B composed exactly from its stages (a BatchNorm's
    square root in float64: this path is not exact anyway), M = round(A / s * 2**shift) on
    ``bits`` bits with the largest shift, O = round(B / s * 2**shift), a clamp at the end as
    levels. Not bit-exact to the float chain: recorded in the graph's metadata and warned."""
    from ..engine.ops.rescale import RescaleParams
    rows = chain.channels if _per_channel(chain.stages, quant) else 1
    mults, offsets, shifts, lows, highs = [], [], [], [], []
    limit = (1 << (bits - 1)) - 1
    for r in range(rows):
        a, b, lo, hi = _composed(chain.stages, r, where)
        m, o = a / _pick(quant.scale, r), b / _pick(quant.scale, r)
        shift = 0
        if abs(round_fraction(m, "HALF_EVEN")) > limit:
            raise UnsupportedModel(f"{where}: a multiplier {float(m):.6g} needs more than {bits} bits "
                                   "at shift 0; give more multiplier bits")
        while shift < MAX_SHIFT and m and abs(round_fraction(m * (1 << (shift + 1)), "HALF_EVEN")) <= limit:
            shift += 1
        mults.append(round_fraction(m * (1 << shift), "HALF_EVEN"))
        offsets.append(round_fraction(o * (1 << shift), "HALF_EVEN"))
        shifts.append(shift)
        lows.append(quant.q_min if lo is None else max(quant.q_min, round_fraction(lo / _pick(quant.scale, r), quant.rounding)))
        highs.append(quant.q_max if hi is None else min(quant.q_max, round_fraction(hi / _pick(quant.scale, r), quant.rounding)))
    if len(set(lows)) > 1 or len(set(highs)) > 1:
        raise UnsupportedModel(f"{where}: clamps at different levels per channel; use thresholds")
    params = RescaleParams(fmt, bits, chain.source.frac, quant.rounding, Overflow.SAT, "single",
                           lows[0], highs[0])
    node = Node(imp.unique(i, q), "rescale", [chain.source.value], params,
                {"multiplier": np.array(mults, np.int64), "offset": np.array(offsets, np.int64),
                 "shift": np.array(shifts, np.int64)},
                f"onnx {names} (float chain as {bits}-bit multipliers: not bit-exact)")
    imp.emit(node, q.output[0], where, scale=out_scale)
    imp.inexact.append(f"{node.name}: the float chain {names} as {bits}-bit fixed-point multipliers "
                       "(not bit-exact to the float chain)")


def _pick(values: tuple, channel: int):
    return values[0] if len(values) == 1 else values[channel]


def _composed(stages, channel, where) -> tuple:
    """(A, B, lo, hi): the chain as y = clamp(A x + B, lo, hi), a clamp allowed only at its end."""
    a, b, lo, hi = Fraction(1), Fraction(0), None, None
    for stage in stages:
        if isinstance(stage, Clamp):
            lo = stage.lo if lo is None or (stage.lo is not None and stage.lo > lo) else lo
            hi = stage.hi if hi is None or (stage.hi is not None and stage.hi < hi) else hi
            continue
        if lo is not None or hi is not None:
            raise UnsupportedModel(f"{where}: a clamp inside the float chain; a multiplier takes it "
                                   "only at the end: use thresholds")
        if isinstance(stage, Affine):
            sa, sb = _pick(stage.a, channel), _pick(stage.b, channel)
        else:  # Normalize, its square root in float64
            ratio = _pick(stage.gamma, channel) / Fraction(float(_pick(stage.denominator, channel)) ** 0.5)
            sa, sb = ratio, _pick(stage.beta, channel) - _pick(stage.mean, channel) * ratio
        a, b = a * sa, b * sa + sb
    return a, b, lo, hi


def add_scaled(imp, i, node, where, ta: Tensor, tb: Tensor):
    """An Add of two integer tensors of float (or unequal) scales, as hardware adds them: each
    side multiplied by an integer onto their common grid (a float32 scale is an odd integer
    times a power of two), then summed exactly; the sum's scale is that grid, and the next
    Quant ends its chain. Equal scales add directly."""
    from ..engine.ops.add import AddParams
    from ..engine.ops.conv2d import Conv2dParams
    if ta.shape != tb.shape:
        raise UnsupportedModel(f"{where}: adds values of shapes {ta.shape} and {tb.shape}")
    if any(len(t.unit()) > 1 for t in (ta, tb)):
        raise UnsupportedModel(f"{where}: adds a value of per-channel float scales; quantize each "
                               "side per tensor before the Add")
    units = [t.unit()[0] for t in (ta, tb)]
    if any(u.denominator & (u.denominator - 1) for u in units):
        raise UnsupportedModel(f"{where}: a scale that is no binary fraction")
    grid = min(Fraction(1, u.denominator) for u in units)  # 2**-e: both units are multiples of it
    name = imp.unique(i, node)
    values = []
    for t, u, side in zip((ta, tb), units, ("a", "b")):
        factor = int(u / grid)
        if factor == 1 and t.frac == 0 and t.scale is None:
            values.append(t.value)
            continue
        if len(t.shape) != 3:
            raise UnsupportedModel(f"{where}: adds values of float scales of shape {t.shape}; "
                                   "the engine scales C,H,W values")
        channels = t.shape[0]
        weights = np.full((channels, 1, 1, 1), factor, np.int64)
        scaled = Node(imp.unique_name(f"{name}.scale_{side}"), "conv2d", [t.value],
                      # the weight's grid cancels the input's: the product is on 2**0, in units of grid
                      Conv2dParams(Format(max(2, factor.bit_length() + 1), -t.frac), groups=channels),
                      {"weight": weights},
                      f"onnx Add {node.name}: its input {side} times {factor} onto the common grid 2**{-_exponent(grid)}")
        imp.append(scaled, where)
        values.append(scaled.name)
    total = Node(name, "add", values, AddParams(), {},
                 f"onnx Add {node.name} (of float scales, on their common grid)")
    imp.emit(total, node.output[0], where, scale=(grid,))


def _exponent(grid: Fraction) -> int:
    return grid.denominator.bit_length() - 1 if grid.numerator == 1 else -(grid.numerator.bit_length() - 1)


def _per_channel(stages, quant) -> bool:
    if quant is not None and len(quant.scale) > 1:
        return True
    for stage in stages:
        fields = ("a", "b") if isinstance(stage, Affine) else \
            ("mean", "gamma", "beta", "denominator") if isinstance(stage, Normalize) else ()
        if any(len(getattr(stage, f)) > 1 for f in fields):
            return True
    return False
