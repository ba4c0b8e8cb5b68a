"""The import's handlers, one per ONNX or QONNX op type, registered by `handles`: each turns
one node into engine nodes, or into a constant, through the walk's bookkeeping (the importer
``imp``: `importer._Importer`) and the rewrites of `passes`. An importer rule is one function
here; the walk finds it by its op type."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..engine.ops.activation import ActivationParams
from ..engine.ops.add import AddParams
from ..engine.ops.concat import ConcatParams
from ..engine.ops.conv_transpose2d import ConvTranspose2dParams
from ..engine.ops.flatten import FlattenParams
from ..engine.ops.pool import PoolParams
from ..engine.ops.upsample import UpsampleParams
from ..fixedpoint.floats import quantize
from ..fixedpoint.format import MAX_BITS, MAX_UNSIGNED_BITS, Format
from ..fixedpoint.modes import Overflow, Rounding
from ..graph.ir import Node
from ..graph.tail import TailOp
from . import floats
from .passes import add_bias, fold_into_conv
from .protocol import INPUT_REGISTER, ONNX_DOMAINS, OWN_NODE, QONNX_DOMAINS
from .reader import (UnsupportedModel, int_attr, ints_attr, padding, power_of_two_exponent, str_attr,
                     tensor_array)
from .values import QConst, QuantRegister, per_channel

ONNX, QONNX = "onnx", "qonnx"
HANDLERS: dict = {}  # (ONNX or QONNX, op type) -> (handler, (fewest, most) inputs)
NOTES: list = []  # what is supported, in registration order


def handles(*op_types, domain=ONNX, note="", inputs=(1, 1)):
    """Register the decorated function as the handler of ``op_types`` (in ONNX's domain, or
    QONNX's), taking ``inputs`` = (fewest, most) inputs (or {op type: (fewest, most)})."""
    def register(fn):
        for op in op_types:
            HANDLERS[(domain, op)] = (fn, inputs[op] if isinstance(inputs, dict) else inputs)
        NOTES.append(note or ", ".join(op_types))
        return fn
    return register


def supported() -> str:
    return ", ".join(NOTES)


def pool_geometry(imp, attrs, where, kernel_default=None):
    if int_attr(attrs, "ceil_mode", 0, where) != 0:
        raise UnsupportedModel(f"{where}: ceil_mode=1 is not supported")
    auto_pad = str_attr(attrs, "auto_pad", "NOTSET", where)
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModel(f"{where}: auto_pad={auto_pad}; give explicit pads")
    kernel = ints_attr(attrs, "kernel_shape", kernel_default, where, 2)
    return dict(kernel=kernel, stride=ints_attr(attrs, "strides", (1, 1), where, 2),
                padding=padding(ints_attr(attrs, "pads", (), where), where),
                dilation=ints_attr(attrs, "dilations", (1, 1), where, 2))


def quantize_const(imp, node, where) -> QConst:
    """A Quant of a constant: its integers, exactly (each element on its scale's grid, rounded
    and clamped as the Quant says), per-channel grids aligned to the finest."""
    signed, overflow, rounding, bits = imp.quantizer(node, where)
    x = imp.const(node.input[0], where, "input").astype(np.float64)
    scale = imp.const(node.input[1], where, "scale").astype(np.float64)
    try:
        scale = np.broadcast_to(scale, x.shape)
    except ValueError:
        raise UnsupportedModel(f"{where}: scale of shape {scale.shape} does not fit the constant "
                               f"{x.shape}") from None
    mantissa, exponent = np.frexp(scale)
    odd = np.flatnonzero((mantissa != 0.5).ravel())
    for value in (scale.ravel()[odd[:1]].tolist() if odd.size else []) + [scale.min(), scale.max()]:
        power_of_two_exponent(float(value), where)  # refuses a scale that is not 2**-f, with its value
    fracs = (1 - exponent).astype(np.int64)
    finest = int(fracs.max()) if fracs.size else 0
    spread = finest - int(fracs.min()) if fracs.size else 0
    if bits + spread > (MAX_BITS if signed else MAX_UNSIGNED_BITS):
        raise UnsupportedModel(f"{where}: per-channel scales 2**{-finest}..2**{spread - finest} are "
                               f"too far apart to align {bits}-bit integers within {MAX_BITS} bits")
    try:  # each element on its own grid (ldexp is exact), then aligned to the finest
        q = quantize(np.ldexp(x, fracs), Format(bits, 0, signed), rounding, overflow)
    except (ValueError, OverflowError) as err:
        raise UnsupportedModel(f"{where}: {err}") from None
    return QConst(q << (finest - fracs), Format(bits + spread, finest, signed))


@handles("Quant", "IntQuant", "Trunc", inputs={"Quant": (4, 4), "IntQuant": (4, 4), "Trunc": (6, 6)}, domain=QONNX, note="Quant/IntQuant, Trunc (v2)")
def quant(imp, i, node, where, attrs):
    x = node.input[0] if node.input else ""
    if x in imp.consts and node.op_type != "Trunc":
        scale = imp.const(node.input[1], where, "scale").astype(np.float64)
        mantissa = np.frexp(scale)[0]
        imp.qconsts[node.output[0]] = quantize_const(imp, node, where) if np.all(mantissa == 0.5) \
            else floats.quantize_float_const(imp, node, where)
        return
    if node.op_type != "Trunc" and (floats.float_scaled(imp, x) or not imp.fixed_point_quant(node)):
        return floats.end(imp, i, node, where)  # a float value, or float scales: thresholds
    reg = imp.register_of(i, node, where)
    t = imp.tensor(x, where)
    reader = imp.sole_reader(node.output[0])
    if (reader is not None and reg.overflow == Overflow.SAT_SYM and reg.from_frac is None
            and OWN_NODE not in reg.marks
            and reader[1].domain in ONNX_DOMAINS
            and reader[1].op_type in ("Conv", "Gemm", "MatMul", "Relu", "Clip")
            and reader[1].input[0] == node.output[0]):
        imp.pending[node.output[0]] = (t, reg, node, where)  # the next layer's input register
        return
    imp.requantize(node, t, reg, where)


@handles("BipolarQuant", inputs=(2, 2), domain=QONNX, note="BipolarQuant (constants; a network "
         "value's sign as a thresholds layer of levels -1 and +1)")
def bipolar(imp, i, node, where, attrs):
    if node.input[0] not in imp.consts:
        return floats.end(imp, i, node, where)
    x = imp.const(node.input[0], where, "input")
    f = imp.scalar_scale(node.input[1], where)
    imp.qconsts[node.output[0]] = QConst(np.where(x >= 0, 1, -1).astype(np.int64), Format(2, f))


@handles("Conv", inputs=(2, 3), note="Conv (2-D, and 1-D as 2-D of height 1)")
def conv(imp, i, node, where, attrs):
    if len(node.input) < 2 or len(node.output) != 1:
        raise UnsupportedModel(f"{where}: Conv needs an input and weights")
    w = imp.qconst(node.input[1], where, "weight")
    if w.ints.ndim not in (3, 4):
        raise UnsupportedModel(f"{where}: weights of rank {w.ints.ndim}; the engine runs 1-D and "
                               "2-D convolutions")
    rank = w.ints.ndim - 2
    b = imp.bias(node.input[2], where) if len(node.input) > 2 else None
    _check_kernel(attrs, w, where, rank)
    stride = ints_attr(attrs, "strides", (1,) * rank, where, rank)
    dilation = ints_attr(attrs, "dilations", (1,) * rank, where, rank)
    pads = ints_attr(attrs, "pads", (), where)
    if rank == 1:  # (N, C, L): a 2-D convolution of height 1, the weights (O, I, 1, K)
        w = QConst(w.ints[:, :, None, :], w.fmt, w.scale)
        stride, dilation = (1, *stride), (1, *dilation)
        pads = (0, *pads[:1], 0, *pads[1:]) if pads else ()
    imp.emit_mac(i, node, where, "conv2d", node.input[0], w, b, stride=stride,
                 padding=padding(pads, where), dilation=dilation, groups=int_attr(attrs, "group", 1, where))


def _check_kernel(attrs, w: QConst, where, rank: int) -> None:
    """A convolution's auto_pad (explicit pads) and kernel_shape (the weights')."""
    auto_pad = str_attr(attrs, "auto_pad", "NOTSET", where)
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModel(f"{where}: auto_pad={auto_pad}; give explicit pads")
    kernel = ints_attr(attrs, "kernel_shape", w.ints.shape[2:], where, rank)
    if kernel != tuple(w.ints.shape[2:]):
        raise UnsupportedModel(f"{where}: kernel_shape {list(kernel)} differs from the weights' "
                               f"{list(w.ints.shape[2:])}")


@handles("ConvTranspose", inputs=(2, 3), note="ConvTranspose (2-D)")
def conv_transpose(imp, i, node, where, attrs):
    w = imp.qconst(node.input[1], where, "weight")
    if w.ints.ndim != 4:
        raise UnsupportedModel(f"{where}: weights of rank {w.ints.ndim}; the engine runs 2-D "
                               "transposed convolutions")
    if w.scale is not None and len(w.scale) > 1:
        raise UnsupportedModel(f"{where}: per-channel float weight scales on axis 0 (the input "
                               "channels of a transposed convolution); quantize its weights per tensor")
    if "output_shape" in attrs:
        raise UnsupportedModel(f"{where}: output_shape; give explicit pads and output_padding")
    _check_kernel(attrs, w, where, 2)
    groups = int_attr(attrs, "group", 1, where)
    b = imp.bias(node.input[2], where) if len(node.input) > 2 else None
    imp.emit_mac(i, node, where, "conv_transpose2d", node.input[0], w, b, ConvTranspose2dParams,
                 w.ints.shape[1] * groups, stride=ints_attr(attrs, "strides", (1, 1), where, 2),
                 padding=padding(ints_attr(attrs, "pads", (), where), where),
                 output_padding=ints_attr(attrs, "output_padding", (0, 0), where, 2),
                 dilation=ints_attr(attrs, "dilations", (1, 1), where, 2), groups=groups)


@handles("Gemm", inputs=(2, 3), note="Gemm")
def gemm(imp, i, node, where, attrs):
    if len(node.input) < 2:
        raise UnsupportedModel(f"{where}: Gemm needs A and B")
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or int_attr(attrs, "transA", 0, where) != 0:
        raise UnsupportedModel(f"{where}: alpha={attrs.get('alpha', 1.0)}, beta={attrs.get('beta', 1.0)}, "
                               f"transA={attrs.get('transA', 0)}; the engine's linear layer is "
                               "alpha=1, beta=1, transA=0")
    w = imp.qconst(node.input[1], where, "weight")
    if w.ints.ndim != 2:
        raise UnsupportedModel(f"{where}: B of rank {w.ints.ndim}, 2 expected")
    if int_attr(attrs, "transB", 0, where, {0, 1}) == 0:
        w = _transposed(w, where)
    b = imp.bias(node.input[2], where) if len(node.input) > 2 else None
    imp.emit_mac(i, node, where, "linear", node.input[0], w, b)


@handles("MatMul", inputs=(2, 2), note="MatMul (+ Add of a bias)")
def matmul(imp, i, node, where, attrs):
    w = imp.qconst(node.input[1], where, "weight")
    if w.ints.ndim != 2:
        raise UnsupportedModel(f"{where}: B of rank {w.ints.ndim}, 2 expected")
    imp.emit_mac(i, node, where, "linear", node.input[0], _transposed(w, where), None)


def _transposed(w: QConst, where) -> QConst:
    """(in, out) weights as the engine's (out, in); per-output float scales sit on axis 1 then,
    which a Quant of the constant read as axis 0."""
    if w.scale is not None and len(w.scale) > 1:
        raise UnsupportedModel(f"{where}: weights (in, out) with per-channel float scales on "
                               "axis 0; export with transB=1 (Gemm) or per-tensor scales")
    return QConst(np.ascontiguousarray(w.ints.T), w.fmt, w.scale)


@handles("Relu", "Clip", inputs={"Relu": (1, 1), "Clip": (1, 3)}, note="Relu, Clip(0, n) (ReLU6)")
def relu(imp, i, node, where, attrs):
    """Relu, and Clip(0, n) for an integer n (ReLU6); on a float value, any Clip."""
    if floats.float_scaled(imp, node.input[0]):
        lo, hi = Fraction(0), None
        if node.op_type == "Clip":
            bounds = [imp.const(n, where, role).astype(np.float64).ravel() if n else None
                      for n, role in zip(list(node.input[1:3]) + [""] * 2, ("min", "max"))]
            if any(b is not None and b.size != 1 for b in bounds):
                raise UnsupportedModel(f"{where}: Clip bounds of more than one value")
            lo, hi = (Fraction(float(b[0])) if b is not None else None for b in bounds)
        return floats.clamp(imp, node, where, node.input[0], lo, hi)
    ceiling = None
    if node.op_type == "Clip":
        bounds = [imp.const(n, where, role).astype(np.float64).ravel() if n else None
                  for n, role in zip(list(node.input[1:3]) + [""] * 2, ("min", "max"))]
        low = bounds[0] if bounds[0] is not None else np.array([attrs.get("min", -np.inf)], np.float64)
        high = bounds[1] if bounds[1] is not None else np.array([attrs.get("max", np.inf)], np.float64)
        if low.size != 1 or high.size != 1 or low[0] != 0 or not (1 <= high[0] < 2 ** 31) \
                or high[0] != int(high[0]):
            raise UnsupportedModel(f"{where}: Clip({low.tolist()}, {high.tolist()}); only Clip(0, n) "
                                   "for an integer n >= 1 (ReLU6) is supported")
        ceiling = int(high[0])
    t, reg, rounding = imp.layer_input(node.input[0], where, True)
    params = ActivationParams(None, ceiling, reg, rounding)
    imp.emit(Node(imp.unique(i, node), "activation", [t.value], params, {},
                    f"onnx {node.op_type} {node.name}"), node.output[0], where)


@handles("MaxPool", note="MaxPool")
def max_pool(imp, i, node, where, attrs):
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedModel(f"{where}: its Indices output is not supported")
    t = imp.tensor(node.input[0], where, scaled=True)  # positive scales: the max is the same
    params = PoolParams(**pool_geometry(imp, attrs, where))
    imp.emit(Node(imp.unique(i, node), "max_pool2d", [t.value], params, {},
                    f"onnx MaxPool {node.name}"), node.output[0], where, scale=t.scale)


@handles("AveragePool", "GlobalAveragePool", "ReduceMean", inputs={"AveragePool": (1, 1), "GlobalAveragePool": (1, 1), "ReduceMean": (1, 2)}, note="AveragePool, GlobalAveragePool, ReduceMean (over H and W)")
def avg_pool(imp, i, node, where, attrs):
    t = imp.tensor(node.input[0], where)
    if len(t.shape) != 3:
        raise UnsupportedModel(f"{where}: input of shape {t.shape}; pooling needs C,H,W")
    keep_dims = True
    if node.op_type == "ReduceMean":  # over H and W: a global average pool (torch's adaptive one)
        axes = imp.const(node.input[1], where, "axes").reshape(-1).tolist() if len(node.input) > 1 \
            else list(ints_attr(attrs, "axes", (), where))
        if sorted(a % 4 for a in axes) != [2, 3]:
            raise UnsupportedModel(f"{where}: the mean over axes {axes}; only over H and W (2, 3)")
        keep_dims = bool(int_attr(attrs, "keepdims", 1, where, {0, 1}))
    if node.op_type in ("GlobalAveragePool", "ReduceMean"):
        geometry = dict(kernel=t.shape[1:], stride=t.shape[1:])
        include_pad = True
    else:
        geometry = pool_geometry(imp, attrs, where)
        include_pad = bool(int_attr(attrs, "count_include_pad", 0, where, {0, 1}))
    kh, kw = geometry["kernel"]
    reader = imp.sole_reader(node.output[0])
    reg = q = None
    if reader is not None and reader[1].domain in QONNX_DOMAINS and \
            reader[1].op_type in ("Quant", "IntQuant") and reader[1].input[0] == node.output[0]:
        j, q = reader  # the mean, rounded once onto the Quant's grid
        reg = imp.register_of(j, q, imp.where(j, q))
        if reg.marks & {INPUT_REGISTER, OWN_NODE}:
            reg = q = None
    if reg is None:  # without a Quant after it, its mean must be exact
        padded = geometry.get("padding", (0, 0)) != (0, 0)
        if (kh * kw) & (kh * kw - 1) or (padded and not include_pad):
            raise UnsupportedModel(f"{where}: a window of {kh * kw} cells{' (fewer at the borders)' if padded and not include_pad else ''} "
                                   "and no Quant after it: its mean has no grid; put a Quant after "
                                   "it, or use a window of 2**n cells")
        reg = QuantRegister(Format(None, t.frac + (kh * kw).bit_length() - 1), Rounding.HALF_EVEN,
                        Overflow.SAT_SYM, None, frozenset())
    params = PoolParams(**geometry, out_fmt=reg.fmt, count_include_pad=include_pad,
                        rounding=reg.rounding, overflow=reg.overflow)
    pool = Node(imp.unique(i, node), "avg_pool2d", [t.value], params, {},
                f"onnx {node.op_type} {node.name}")
    if not keep_dims:  # ReduceMean to (N, C): the pool, then a flatten
        if q is not None:
            raise UnsupportedModel(f"{where}: a Quant after a ReduceMean with keepdims=0; keep the dims")
        imp.append(pool, where)
        return imp.emit(Node(imp.unique_name(f"{pool.name}.flatten"), "flatten", [pool.name],
                               FlattenParams(), {}, f"onnx {node.op_type} {node.name} (keepdims=0)"),
                          node.output[0], where)
    imp.infer(pool, where)
    imp.nodes.append(pool)
    if q is not None:
        imp.absorbed.add(j)
    imp.bind(pool, q.output[0] if q is not None else node.output[0])


def _constant_operand(imp, node):
    """(the network value, the constant, whether the constant comes first) of a binary op, or
    (None, None, False) when neither input is a constant."""
    a, b = node.input[0], node.input[1]
    for const, x, first in ((b, a, False), (a, b, True)):
        if const in imp.consts or const in imp.qconsts:
            return x, const, first
    return None, None, False


def _float_operand(imp, x, const, where, role) -> tuple:
    """A constant of a float chain as exact fractions, one or one per channel (a quantized
    constant at its real value)."""
    channels = floats.channels_of(imp, x)
    if const in imp.qconsts:
        c = imp.qconsts[const]
        ints, units = c.ints.reshape(-1), c.unit()
        if len(units) not in (1, ints.size):
            raise UnsupportedModel(f"{where}: its {role} holds {ints.size} values of {len(units)} scales")
        values = [Fraction(int(v)) * u for v, u in zip(ints, per_channel(units, ints.size))]
        if len(values) not in (1, channels):
            raise UnsupportedModel(f"{where}: its {role} holds {len(values)} values for "
                                   f"{channels} channels")
        return tuple(values)
    return floats.per_channel(imp, const, where, channels, role)


def _tail_op(op: str, values: tuple) -> TailOp | None:
    """The float32 op of a chain's stage (None: its constant is no float32, so no float tail
    computes it as the reference does)."""
    try:
        return TailOp(op, tuple(float(v) for v in values))
    except (ValueError, OverflowError):
        return None


def _into_chain(imp, x, const) -> bool:
    """Whether a binary op with a constant joins a float chain: its value is a float one, or
    the constant is a float (not quantized)."""
    return floats.float_scaled(imp, x) or const in imp.consts


@handles("Add", inputs=(2, 2), note="Add")
def add(imp, i, node, where, attrs):
    x, const, _ = _constant_operand(imp, node)
    if const is not None and _into_chain(imp, x, const):
        c = _float_operand(imp, x, const, where, "addend")
        return floats.extend_affine(imp, node, x, where, b=c, op=_tail_op("Add", c))
    if const is not None:
        return add_bias(imp, i, node, where, x, imp.qconsts[const])
    if any(imp.tensors.get(n) is not None and imp.tensors[n].scale is not None for n in node.input[:2]):
        ta, tb = (imp.tensor(n, where, scaled=True) for n in node.input[:2])
        return floats.add_scaled(imp, i, node, where, ta, tb)
    ta, tb = imp.tensor(node.input[0], where), imp.tensor(node.input[1], where)
    imp.emit(Node(imp.unique(i, node), "add", [ta.value, tb.value], AddParams(), {},
                    f"onnx Add {node.name}"), node.output[0], where)


@handles("Sub", "Div", inputs=(2, 2), note="Sub, Div by constants (in a float chain)")
def sub_div(imp, i, node, where, attrs):
    x, const, first = _constant_operand(imp, node)
    if const is None:
        raise UnsupportedModel(f"{where}: {node.op_type} of two network values; the engine takes "
                               f"{node.op_type} by a constant only")
    c = _float_operand(imp, x, const, where, "constant")
    if node.op_type == "Sub":  # x - c, or c - x
        return floats.extend_affine(imp, node, x, where, a=(-1,) if first else (1,),
                                    b=c if first else tuple(-v for v in c),
                                    op=_tail_op("SubFrom" if first else "Sub", c))
    if first or any(v == 0 for v in c):
        raise UnsupportedModel(f"{where}: Div {'of a constant by a value (not monotone)' if first else 'by zero'}")
    floats.extend_affine(imp, node, x, where, a=tuple(1 / v for v in c), op=_tail_op("Div", c))


@handles("Mul", inputs=(2, 2), note="Mul by constants (in a float chain; quantized per-channel "
         "ones after a Conv fold into it)")
def mul(imp, i, node, where, attrs):
    x, const, _ = _constant_operand(imp, node)
    if const is not None and _into_chain(imp, x, const):
        c = _float_operand(imp, x, const, where, "factor")
        return floats.extend_affine(imp, node, x, where, a=c, op=_tail_op("Mul", c))
    producer = imp.producer(x, where) if const is not None else None
    if producer is None or producer.op != "conv2d" or producer.params.out_fmt is not None:
        raise UnsupportedModel(f"{where}: Mul is supported by constants in a float chain (up to "
                               "the next Quant), or by quantized per-channel constants right after "
                               "a Conv (a folded BatchNorm)")
    m = imp.qconsts[const]
    channels = producer.arrays["weight"].shape[0]
    if m.ints.size != channels or (m.ints.ndim >= 3 and m.ints.shape[-3:] != (channels, 1, 1)):
        raise UnsupportedModel(f"{where}: multipliers of shape {m.ints.shape}, one per channel "
                               f"({channels}) expected")
    fold_into_conv(imp, producer, m.ints.reshape(-1), m.fmt.frac_bits,
                         np.zeros(channels, np.int64), f" * onnx Mul {node.name}", node.output[0], where)


@handles("Concat", inputs=(1, 1 << 16), note="Concat (channels)")
def concat(imp, i, node, where, attrs):
    ins = [imp.tensor(n, where, scaled=True) for n in node.input]
    if len({t.scale for t in ins}) > 1:
        raise UnsupportedModel(f"{where}: joins values of different float scales; quantize them "
                               "with one quantizer (Brevitas: a shared act_quant) before the Concat")
    rank = len(ins[0].shape) + 1
    axis = int_attr(attrs, "axis", None, where)
    if axis not in (1, 1 - rank):
        raise UnsupportedModel(f"{where}: axis={axis}; the engine joins along channels (axis 1)")
    scale = ins[0].scale if ins[0].scale is None or len(ins[0].scale) == 1 else None
    if ins[0].scale is not None and scale is None:
        raise UnsupportedModel(f"{where}: joins values of per-channel float scales")
    imp.emit(Node(imp.unique(i, node), "concat", [t.value for t in ins], ConcatParams(), {},
                    f"onnx Concat {node.name}"), node.output[0], where, scale=scale)


@handles("Flatten", note="Flatten")
def flatten(imp, i, node, where, attrs):
    if int_attr(attrs, "axis", 1, where) != 1:
        raise UnsupportedModel(f"{where}: axis={attrs.get('axis')}; only 1 (to N, -1) is supported")
    if node.input[0] in imp.chains:
        return floats.flatten(imp, node, where)
    t = _per_tensor(imp, node.input[0], where)
    imp.emit(Node(imp.unique(i, node), "flatten", [t.value], FlattenParams(), {},
                    f"onnx Flatten {node.name}"), node.output[0], where, scale=t.scale)


def _per_tensor(imp, name, where):
    """The input of a reshape: its float scale, if any, one for all its values."""
    t = imp.tensor(name, where, scaled=True)
    if t.scale is not None and len(t.scale) > 1:
        raise UnsupportedModel(f"{where}: reshapes a value of per-channel float scales; quantize "
                               "it per tensor before")
    return t


@handles("Reshape", inputs=(2, 2), note="Reshape (to N,-1)")
def reshape(imp, i, node, where, attrs):
    chain = imp.chains.get(node.input[0])
    t = None if chain is not None else _per_tensor(imp, node.input[0], where)
    shape = imp.const(node.input[1], where, "shape").reshape(-1).tolist()
    size = math.prod(chain.shape if chain is not None else t.shape)
    batches = (-1, imp.declared_batch()) if int_attr(attrs, "allowzero", 0, where) \
        else (0, -1, imp.declared_batch())  # 0 copies the batch unless allowzero
    if len(shape) != 2 or shape[0] not in batches or shape[1] not in (size, -1) \
            or shape[0] == shape[1] == -1:
        raise UnsupportedModel(f"{where}: Reshape to {shape}; only to (N, {size}) is supported")
    if chain is not None:
        return floats.flatten(imp, node, where)
    imp.emit(Node(imp.unique(i, node), "flatten", [t.value], FlattenParams(), {},
                    f"onnx Reshape {node.name}"), node.output[0], where, scale=t.scale)


@handles("BatchNormalization", inputs=(5, 5), note="BatchNormalization (in a float chain: exact thresholds)")
def batchnorm(imp, i, node, where, attrs):
    if len(node.output) > 1 and any(node.output[1:]) or int_attr(attrs, "training_mode", 0, where) != 0:
        raise UnsupportedModel(f"{where}: BatchNormalization in training mode; export for inference")
    channels = floats.channels_of(imp, node.input[0])
    names = ("scale", "bias", "mean", "variance")
    gamma, beta, mean, var = (floats.per_channel(imp, n, where, channels, r)
                              for n, r in zip(node.input[1:5], names))
    eps = attrs.get("epsilon", float(np.float32(1e-5)))  # ONNX's default, a float32
    if not isinstance(eps, float):
        raise UnsupportedModel(f"{where}: epsilon {eps!r} is not a float")
    if any(v + Fraction(eps) <= 0 for v in var):
        raise UnsupportedModel(f"{where}: variance + epsilon is not positive")
    floats.normalize(imp, node, where, node.input[0], gamma, beta, mean, var, Fraction(eps))


@handles("Resize", "Upsample", inputs={"Resize": (1, 4), "Upsample": (1, 2)}, note="Resize/Upsample (nearest, integer factors)")
def resize(imp, i, node, where, attrs):
    t = imp.tensor(node.input[0], where, scaled=True)
    if str_attr(attrs, "mode", "nearest", where) != "nearest":
        raise UnsupportedModel(f"{where}: mode={attrs.get('mode')}; only nearest is supported")
    if node.op_type == "Resize" and len(node.input) > 2:  # opset 11 on: X, roi, scales, sizes
        transform = str_attr(attrs, "coordinate_transformation_mode", "half_pixel", where)
        rounding = str_attr(attrs, "nearest_mode", "round_prefer_floor", where)
        # each pair maps output index i to input index i // s for every integer factor s
        if (transform, rounding) not in {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                                         ("half_pixel", "round_prefer_ceil"),
                                         ("pytorch_half_pixel", "round_prefer_floor"),
                                         ("pytorch_half_pixel", "round_prefer_ceil")}:
            raise UnsupportedModel(f"{where}: coordinate_transformation_mode={transform} with "
                                   f"nearest_mode={rounding} does not repeat each value s times")
        scales_name = node.input[2]
        sizes_name = node.input[3] if len(node.input) > 3 else ""
    else:  # Upsample, and Resize of opset 10 (X, scales): i // s
        scales_name, sizes_name = (node.input[1] if len(node.input) > 1 else ""), ""
    if scales_name and imp.const(scales_name, where, "scales").size:
        factors = imp.const(scales_name, where, "scales").astype(np.float64).tolist()
    elif sizes_name:
        sizes = imp.const(sizes_name, where, "sizes").tolist()
        full = (None, *t.shape)
        if len(sizes) != 4 or any(s % d for s, d in zip(sizes[1:], full[1:])):
            raise UnsupportedModel(f"{where}: sizes {sizes} are not integer multiples of {list(full)}")
        factors = [1.0] + [s / d for s, d in zip(sizes[1:], full[1:])]
    elif "scales" in attrs:  # Upsample version 7
        factors = list(attrs["scales"])
    else:
        raise UnsupportedModel(f"{where}: neither scales nor sizes")
    if len(factors) != 4 or factors[:2] != [1.0, 1.0] or any(f != int(f) or f < 1 for f in factors[2:]):
        raise UnsupportedModel(f"{where}: scales {factors}; only integer factors on H and W "
                               "([1, 1, s_h, s_w]) are supported")
    params = UpsampleParams((int(factors[2]), int(factors[3])))
    imp.emit(Node(imp.unique(i, node), "upsample", [t.value], params, {},
                    f"onnx {node.op_type} {node.name}"), node.output[0], where, scale=t.scale)


@handles("Identity", "Dropout", inputs={"Identity": (1, 1), "Dropout": (1, 3)}, note="Identity, Dropout")
def alias(imp, i, node, where, attrs):
    if node.input[0] in imp.consts or node.input[0] in imp.qconsts:
        table = imp.consts if node.input[0] in imp.consts else imp.qconsts
        table[node.output[0]] = table[node.input[0]]
        return
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        raise UnsupportedModel(f"{where}: its mask output is read; inference has none")
    if node.input[0] in imp.chains:  # a chain is never changed in place: both names share it
        imp.chains[node.output[0]] = imp.chains[node.input[0]]
        return
    imp.flush_pending(node.input[0])
    imp.tensors[node.output[0]] = imp.tensor(node.input[0], where, scaled=True)


@handles("Constant", inputs=(0, 0), note="Constant")
def constant(imp, i, node, where, attrs):
    (key, value), = attrs.items() if len(attrs) == 1 else ((None, None),)
    if key == "value":
        imp.consts[node.output[0]] = tensor_array(value.t, where)
    elif key in ("value_float", "value_floats", "value_int", "value_ints"):
        imp.consts[node.output[0]] = np.array(value, np.float32 if "float" in key else np.int64)
    else:
        raise UnsupportedModel(f"{where}: a Constant of {sorted(attrs)}; numbers only (value, "
                               "value_float(s), value_int(s))")


@handles("MultiThreshold", inputs=(2, 2), domain=QONNX, note="MultiThreshold")
def multithreshold(imp, i, node, where, attrs):
    """FINN's thresholds: the count of thresholds the value reaches, on its integers exactly
    (a value of a float chain pulled back through it), times out_scale plus out_bias."""
    layout = str_attr(attrs, "data_layout", "", where)
    if layout not in ("", "NCHW", "NC"):
        raise UnsupportedModel(f"{where}: data_layout {layout}; the engine's values are NCHW")
    floats.multithreshold(imp, i, node, where, imp.const(node.input[1], where, "thresholds"),
                          str_attr(attrs, "out_dtype", "", where),
                          Fraction(float(attrs.get("out_scale", 1.0))),
                          Fraction(float(attrs.get("out_bias", 0.0))))
