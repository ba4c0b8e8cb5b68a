"""Float scales in the import (docs/arithmetic.md section 12): a float-scale Quant of a constant
becomes its integers and their scales; a float value between two integer tensors (a float scale,
a float bias, a float BatchNormalization, Mul/Add/Sub/Div by constants, Relu/Clip) is a
`FloatChain` that the next Quant ends, as a thresholds layer computed exactly; a float chain
before the network's first Quant becomes the input's own quantization (`graph.ir.InputLevels`).
The handlers call these where they meet a float part."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from ..engine.ops.flatten import FlattenParams
from ..engine.ops.thresholds import ThresholdsParams
from ..fixedpoint.chains import (Affine, Clamp, Normalize, Quantizer, float_thresholds,
                                float_thresholds_of_reals, thresholds, thresholds_of_reals)
from ..fixedpoint.format import Format, bits_needed
from ..fixedpoint.floats import quantize
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.reference import round_fraction
from ..fixedpoint.scalar import DOMAIN_LIMIT
from ..graph.ir import InputLevels, Node
from ..graph.tail import FloatTail, TailOp
from .protocol import RESCALE
from .reader import UnsupportedModel, marks
from .values import FloatChain, QConst, Tensor
from .values import per_channel as repeated_per_channel

MAX_THRESHOLD_BITS = 8  # more than 2**8 - 1 levels per channel are too many for a comparator table
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


def extend(imp, node, name, where, stage, op: TailOp | None = None):
    """The float value ``node`` computes from ``name`` through ``stage`` (``op``: the same as
    the reference's float32 op, for a float tail)."""
    chain = chain_of(imp, name, where)
    imp.chains[node.output[0]] = dataclasses.replace(chain, stages=chain.stages + [stage],
                                                     nodes=chain.nodes + [node.name or node.op_type],
                                                     ops=chain.ops + (op,))


def flatten(imp, node, where):
    """A Flatten or Reshape to (N, -1) of a float value: its stages are elementwise and commute
    with it, so the integers are flattened where the chain ends. Per-tensor stages only (the
    channels they would apply to are gone)."""
    chain = chain_of(imp, node.input[0], where)
    if _per_channel(chain.stages, None):
        raise UnsupportedModel(f"{where}: flattens a float value of per-channel stages "
                               f"({chain.describe()}); quantize it before the {node.op_type}")
    imp.chains[node.output[0]] = dataclasses.replace(
        chain, channels=1, shape=(math.prod(chain.shape),), nodes=chain.nodes + [node.name or node.op_type],
        flattened=True)


def _flatten_after(imp, chain, onnx_out, where):
    """The Flatten a chain took on its way, on the integers that end it."""
    if chain.flattened:
        t = imp.tensors[onnx_out]
        imp.emit(Node(imp.unique_name(f"{t.value}.flatten"), "flatten", [t.value], FlattenParams(), {},
                      f"onnx {' -> '.join(chain.nodes)} (a flatten of the float value, on its integers)"),
                 onnx_out, where, scale=t.scale)


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


def extend_affine(imp, node, x, where, a=None, b=None, op: TailOp | None = None):
    """x * a + b by constants (None: 1, 0) in the chain of ``x``; ``op``: its float32 form."""
    extend(imp, node, x, where, Affine(a or (1,), b or (0,)), op)


def normalize(imp, node, where, x, gamma, beta, mean, var, eps):
    """A float BatchNormalization in the chain: var + eps exactly, its square root kept exact."""
    extend(imp, node, x, where, Normalize(mean, gamma, beta, tuple(v + eps for v in var)))


def clamp(imp, node, where, x, lo, hi):
    ops = [TailOp(op, (float(v),)) for op, v in (("Max", lo), ("Min", hi)) if v is not None]
    extend(imp, node, x, where, Clamp(lo, hi), ops[0] if len(ops) == 1 else None)


def float_tail(imp, name) -> tuple:
    """(the integer tensor, `FloatTail`) of the float chain ``name`` that ends the network with
    no quantizer (FINN's TensorNorm), or an UnsupportedModel naming why it cannot be one."""
    chain = imp.chains[name]
    first = chain.stages[0] if chain.stages else None
    why = ("it starts at the float input" if chain.source is None else
           "it is flattened on the way" if chain.flattened else
           "it holds an op without one float32 form (BatchNormalization, Clip of two bounds)"
           if None in chain.ops or not isinstance(first, Affine) else None)
    if why is None:
        unit, offset, ops = first.a, first.b, list(chain.ops)
        if ops and ops[0].op == "Mul" and not any(offset) and all(power_of_two(u) is not None for u in unit):
            # q 2**-f * m rounds once, as the export's Quant then Mul does while q 2**-f is a float32
            n = max(len(unit), len(ops[0].operand))
            unit = tuple(u * Fraction(m) for u, m in zip(repeated_per_channel(unit, n),
                                                         repeated_per_channel(ops[0].operand, n)))
            ops.pop(0)
        if ops and ops[0].op == "Add" and not any(offset):  # the same float32 sum either way
            offset = ops.pop(0).operand
        try:
            tail = FloatTail(tuple(float(v) for v in unit), tuple(float(v) for v in offset),
                             tuple(ops), tuple(chain.nodes))
        except (ValueError, OverflowError) as err:
            why = str(err)
    if why is not None:
        raise UnsupportedModel(f"the model's output {name} is a float value (after {chain.describe()}) "
                               f"that no Quant ends, and it cannot be a float tail: {why}; end the "
                               "network with a quantizer (Brevitas: a QuantIdentity)")
    return chain.source, tail


def quantizer(imp, i, q, where, channels) -> tuple:
    """(Quantizer, output Format, output float scales or None, first level) of the Quant ``q``
    ending a chain. A zero-point z keeps the quantizer's integers q in their b bits, but the
    engine's integer is q - z (the value (q - z) * scale: docs/arithmetic.md section 12): its
    levels run from q_min - z, in the narrowest signed format that holds them."""
    signed, overflow, rounding, bits = imp.quantizer(q, where, zero_point=True)
    s = scales(imp, q.input[1], where, channels)
    z = imp.zero_point(q, where)
    f = power_of_two(s[0]) if len(s) == 1 else None
    stored = Format(bits, 0, signed)  # the quantizer's own integers
    q_min = stored.min_int + (overflow == Overflow.SAT_SYM)  # narrow: the symmetric range
    lo, hi = q_min - z, stored.max_int - z
    fmt = Format(bits if z == 0 else bits_needed(lo, hi), f if f is not None else 0, signed or z != 0)
    return Quantizer(s, (z,), q_min, stored.max_int, rounding), fmt, None if f is not None else s, lo


def bipolar_quantizer(imp, q, where, channels) -> tuple:
    """(Quantizer, output Format, output float scales or None, first level) of a BipolarQuant
    of a network value (QONNX: +1 where x >= 0, else -1, times its scale): floor(y / s + 1)
    reaches 1 exactly where y >= 0, so the sign is a quantizer of two levels, 0 and 1; the
    engine's integers are -1 and +1 (first -1, step 2)."""
    s = scales(imp, q.input[1], where, channels)
    f = power_of_two(s[0]) if len(s) == 1 else None
    return Quantizer(s, (1,), 0, 1, Rounding.FLOOR), Format(2, f if f is not None else 0), \
        None if f is not None else s, -1


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
    bipolar = q.op_type == "BipolarQuant"
    quant, fmt, out_scale, first = (bipolar_quantizer(imp, q, where, chain.channels) if bipolar
                                    else quantizer(imp, i, q, where, chain.channels))
    step = 2 if bipolar else 1
    rows = chain.channels if _per_channel(chain.stages, quant) else 1
    levels = quant.q_max - quant.q_min
    marked = [m[len(RESCALE):] for m in marks(q) if m.startswith(RESCALE) and m[len(RESCALE):].isdigit()]
    bits = None if bipolar else imp.rescale_bits or (int(marked[0]) if marked else None) or \
        (DEFAULT_MULTIPLIER_BITS if levels >> MAX_THRESHOLD_BITS else None)  # an export's multipliers come back
    if chain.source is None:  # the network's float input
        _input_levels(imp, q, fmt, first, out_scale,
                      [float_thresholds(chain.stages, quant, r) for r in range(rows)], step)
    elif bits is not None:
        if first != quant.q_min:
            raise UnsupportedModel(f"{where}: a zero-point with multipliers; use thresholds")
        _multipliers(imp, i, q, where, chain, quant, fmt, out_scale, bits,
                     " -> ".join(chain.nodes + [q.name or q.op_type]))
    else:  # clamped to the domain: every integer in it compares the same
        rows_of = [thresholds(chain.stages, quant, r, -DOMAIN_LIMIT, DOMAIN_LIMIT - 1) for r in range(rows)]
        _thresholds_layer(imp, i, q, where, chain, rows_of, levels, first, fmt, out_scale,
                          "float chain as exact thresholds", step)
    _flatten_after(imp, chain, q.output[0], where)


def _thresholds_layer(imp, i, node, where, chain, rows_of, levels, first, fmt, scale, label, step=1):
    """The thresholds layer on ``chain``'s integer source, its rows [(direction, thresholds)]."""
    src = chain.source
    names = " -> ".join(chain.nodes + [node.name or node.op_type])
    layer = Node(imp.unique(i, node), "thresholds", [src.value], ThresholdsParams(fmt, first, src.frac, step),
                 {"thresholds": np.array([t for _, t in rows_of], np.int64).reshape(len(rows_of), levels),
                  "signs": np.array([s for s, _ in rows_of], np.int64)}, f"onnx {names} ({label})")
    imp.emit(layer, node.output[0], where, scale=scale)


def _input_levels(imp, q, fmt, first, out_scale, table, step=1):
    """The network's float input quantized by ``table`` [(direction, float64 thresholds)] per
    row: the graph input's levels and format."""
    imp.input.fmt = fmt
    imp.input.levels = InputLevels(first, tuple(s for s, _ in table), tuple(tuple(t) for _, t in table), step)
    name = imp.input.name
    imp.value_fracs[name] = fmt.frac_bits
    imp.tensors[q.output[0]] = Tensor(name, imp.input.shape, fmt.frac_bits, out_scale)


def multithreshold(imp, i, node, where, table, dtype: str, out_scale: Fraction, out_bias: Fraction):
    """A MultiThreshold on the value ``node.input[0]`` (integers, or a float chain): each
    threshold pulled back to the integers exactly; the output first + step * count on a grid
    2**-f where out_bias and out_scale are whole numbers first and step of it (a bipolar
    out_scale 2, out_bias -1: first -1, step 2), else on out_scale as a float scale with first =
    out_bias / out_scale an integer."""
    bits, signed = _datatype(dtype, where)
    chain = chain_of(imp, node.input[0], where)
    table = np.asarray(table, np.float64)
    if table.ndim != 2 or table.shape[0] not in (1, chain.channels):
        raise UnsupportedModel(f"{where}: thresholds of shape {table.shape}; (1 or {chain.channels}, levels)")
    grid = _binary_grid(out_scale, out_bias)
    if out_scale <= 0 or (grid is None and (out_bias / out_scale).denominator != 1):
        raise UnsupportedModel(f"{where}: out_bias {float(out_bias)} is not a whole number of out_scale "
                               f"{float(out_scale)} nor both of a power of two (or out_scale is not positive)")
    unit = Fraction(2) ** -grid if grid is not None else out_scale
    first, step = int(out_bias / unit), int(out_scale / unit)
    fmt = Format(bits, grid if grid is not None else 0, signed)
    top = first + step * table.shape[1]
    if not fmt.min_int <= first or top > fmt.max_int:
        raise UnsupportedModel(f"{where}: levels {first}..{top} leave out_dtype {dtype}")
    rows = table.shape[0] if table.shape[0] > 1 or not _per_channel(chain.stages, None) else chain.channels
    at = lambda r: table[r if table.shape[0] > 1 else 0].tolist()
    scale = None if grid is not None else (out_scale,)
    if chain.source is None:  # on the network's float input: its quantization
        _input_levels(imp, node, fmt, first, scale,
                      [float_thresholds_of_reals(chain.stages, r, at(r)) for r in range(rows)], step)
    else:
        rows_of = [thresholds_of_reals(chain.stages, r, at(r), -DOMAIN_LIMIT, DOMAIN_LIMIT - 1) for r in range(rows)]
        _thresholds_layer(imp, i, node, where, chain, rows_of, table.shape[1], first, fmt, scale,
                          "thresholds, exact", step)
    _flatten_after(imp, chain, node.output[0], where)


def _binary_grid(out_scale: Fraction, out_bias: Fraction) -> int | None:
    """The coarsest f (|f| <= 62) with out_scale and out_bias whole numbers of 2**-f and
    out_scale a power of two or twice one (the levels one or two integers apart), else None."""
    for f in range(-MAX_SHIFT, MAX_SHIFT + 1):
        unit = Fraction(2) ** -f
        step, first = out_scale / unit, out_bias / unit
        if step.denominator == 1 and first.denominator == 1:
            return f if step in (1, 2) else None
    return None


def _datatype(name: str, where) -> tuple:
    """(bits, signed) of a qonnx DataType name (INTn, UINTn, BINARY, BIPOLAR)."""
    if name == "BINARY":
        return 1, False
    if name == "BIPOLAR":  # -1, +1
        return 2, True
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
