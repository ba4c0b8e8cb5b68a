"""The import's rewrites, each a small function named after what it does: a Quant taken as the
output register of the layer before it, a constant Add taken as a bias or a folded BatchNorm's
offset, a Mul or a BatchNormalization folded into the conv before it, and after the walk the
accumulators applied and the unbounded markers checked. The handlers and the walk call them
where the pattern they rewrite is met."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..engine.ops.conv2d import Conv2dParams
from ..engine.ops.conv2d_bn import Conv2dBatchNormParams
from ..engine.registers import Accumulator
from ..engine.registry import OPS
from ..engine.spec import Register
from ..files.read import parse_json
from ..fixedpoint.format import MAX_BITS
from ..graph.ir import Graph, Node
from .protocol import ACCUMULATORS_KEY, INPUT_REGISTER, OWN_NODE, QONNX_DOMAINS, REGISTER_OPS, UNBOUNDED
from .reader import UnsupportedModel, attributes, int_attr, marks
from .values import QConst


def take_output_register(imp, node: Node, onnx_out: str):
    """Fold the Quant/Trunc that alone reads ``onnx_out`` into ``node``'s output register,
    where the node has a free one (repeated: a Quant after the folded one cannot fold)."""
    reader = imp.sole_reader(onnx_out)
    if reader is None or not free_output(node):
        return
    i, q = reader
    if q.domain not in QONNX_DOMAINS or q.op_type not in REGISTER_OPS or q.input[0] != onnx_out \
            or not imp.fixed_point_quant(q):  # float scales, a zero-point: a float chain's end
        return
    where = imp.where(i, q)
    reg = imp.register_of(i, q, where)
    if reg.marks & {INPUT_REGISTER, OWN_NODE} or (reg.from_frac is not None and node.out_fmt.frac_bits > reg.from_frac):
        return  # Trunc rounds onto its input grid first: a node of its own
    p = node.params
    if getattr(p, "input_register", None) is not None and p.rounding != reg.rounding:
        return  # one rounding per layer: the input register's rules
    node.params = OPS[node.op].with_output_register(p, Register(reg.fmt, reg.rounding, reg.overflow))
    imp.infer(node, where)
    imp.absorbed.add(i)
    imp.bind(node, q.output[0])


def free_output(node: Node) -> bool:
    """Whether the node has an output register it leaves empty (its value unrounded)."""
    spec = OPS[node.op]
    return spec.output_fields is not None and spec.output_register(node.params) is None


def add_bias(imp, i, node, where, x_name, c: QConst):
    """``x + c`` where x is a MAC layer's raw output: c is its bias (MatMul + Add), or a
    folded BatchNorm's offset (Mul + Add)."""
    producer = imp.producer(x_name, where)
    channels = producer.arrays["weight"].shape[0] if producer is not None and "weight" in producer.arrays else None
    per_channel = channels is not None and c.ints.size == channels and \
        (c.ints.ndim <= 1 or c.ints.shape == (1, channels) or
         c.ints.shape[-3:] == (channels, 1, 1) or c.ints.shape == (1, channels, 1, 1))
    if producer is None or producer.params.out_fmt is not None or not per_channel:
        raise UnsupportedModel(f"{where}: Add of a constant is supported only as a per-channel "
                               "bias right after a MatMul, Conv or Gemm (or a Mul after a Conv)")
    values = c.ints.reshape(-1)
    if producer.op == "conv2d_bn":
        p = producer.params
        if np.any(producer.arrays["offset"]):
            raise UnsupportedModel(f"{where}: a second offset after {producer.name}")
        total = p.accumulator_frac + p.multiplier_frac
        mult = producer.arrays["multiplier"]
        if c.fmt.frac_bits > total:  # a finer offset: the multipliers move to its grid
            mult = shifted(mult, c.fmt.frac_bits - total, where)
            p = dataclasses.replace(p, multiplier_frac=c.fmt.frac_bits - p.accumulator_frac)
            total = c.fmt.frac_bits
        producer.arrays = dict(producer.arrays, multiplier=mult,
                               offset=shifted(values, total - c.fmt.frac_bits, where))
        producer.params = p
    elif "bias" in producer.arrays:
        raise UnsupportedModel(f"{where}: a second bias after {producer.name}")
    else:
        producer.params = dataclasses.replace(producer.params, bias_fmt=c.fmt)
        producer.arrays = dict(producer.arrays, bias=values.copy())
    producer.source += f" + onnx Add {node.name}"
    imp.infer(producer, where)
    imp.bind(producer, node.output[0])


def fold_into_conv(imp, conv: Node, mult, mult_frac, offset, source, onnx_out, where):
    acc_frac = conv.out_fmt.frac_bits
    fields = {f.name: getattr(conv.params, f.name) for f in dataclasses.fields(Conv2dParams)}
    params = Conv2dBatchNormParams(**fields, accumulator_frac=acc_frac, multiplier_frac=mult_frac)
    conv.op, conv.params = "conv2d_bn", params
    conv.arrays = dict(conv.arrays, multiplier=np.asarray(mult, np.int64),
                       offset=np.asarray(offset, np.int64))
    conv.source += source
    imp.infer(conv, where)
    imp.bind(conv, onnx_out)


def apply_accumulators(imp):
    recorded = {}
    for prop in imp.model.metadata_props:
        if prop.key == ACCUMULATORS_KEY:
            try:
                recorded = {k: Accumulator.from_dict(v) for k, v in
                            parse_json(prop.value, "metadata wageubn_sim.accumulators").items()}
            except (ValueError, TypeError, AttributeError) as err:
                raise UnsupportedModel(f"metadata wageubn_sim.accumulators is malformed ({err})") from None
    wanted = imp.accumulators if imp.accumulators is not None else recorded
    if isinstance(wanted, Accumulator):
        wanted = {"*": wanted}
    if not isinstance(wanted, dict):
        raise TypeError("accumulators must be an Accumulator or a dict {layer name: Accumulator}")
    macs = [n for n in imp.nodes if n.op in ("conv2d", "linear", "conv2d_bn")]
    unknown = sorted(set(wanted) - {n.name for n in macs} - {"*"})
    if unknown:
        raise UnsupportedModel(f"accumulators name layers the model does not have: {unknown}; its "
                               f"MAC layers are {[n.name for n in macs][:8]}")
    for n in macs:
        acc = wanted.get(n.name, wanted.get("*"))
        if acc is not None:  # its output format may change: `check` derives it again
            n.params, n.out_fmt = dataclasses.replace(n.params, accumulator=acc), None


def check_unbounded(imp, graph: Graph):
    """A register marked unbounded must never need its bit width (else the marker would
    change a number qonnx clamps)."""
    from ..execution.ranges import value_ranges
    from ..fixedpoint.format import bits_needed
    marked = [n for n in graph.nodes if getattr(n.params, "out_fmt", None) is not None
              and not n.params.out_fmt.bounded]
    if not marked or not graph.inputs[0].fmt.bounded:
        return
    ranges = value_ranges(graph)
    for q in imp.graph.node:
        if UNBOUNDED not in marks(q) or q.output[0] not in imp.tensors:
            continue
        value = imp.tensors[q.output[0]].value
        if value not in ranges:
            continue
        bits = int(imp.const(q.input[5 if q.op_type == "Trunc" else 3], "", "bit width").ravel()[0])
        signed = bool(int_attr(attributes(q, ""), "signed", 1, ""))
        narrow = bool(int_attr(attributes(q, ""), "narrow", 0, ""))
        if bits_needed(*ranges[value], signed, narrow) > bits:
            raise UnsupportedModel(f"node {q.name}: marked unbounded, but its value may need more "
                                   f"than its {bits} bits; remove the marker")


def shifted(values, shift: int, where) -> np.ndarray:
    values = np.asarray(values, np.int64)
    if shift and values.size and int(np.abs(values).max()) >= 1 << max(0, MAX_BITS - 1 - shift):
        raise UnsupportedModel(f"{where}: aligning the constants leaves the 62-bit domain")
    return values << shift


def clamp_thresholds(graph: Graph):
    """Each thresholds table clamped to its input's static range (`clamped_to_range`): the
    canonical table, which the export writes and its import reads back."""
    from ..engine.ops.thresholds import clamped_to_range
    from ..execution.ranges import value_ranges
    layers = [n for n in graph.nodes if n.op == "thresholds"]
    if not layers or not graph.inputs[0].fmt.bounded:
        return
    ranges = value_ranges(graph)
    for node in layers:
        node.arrays = dict(node.arrays, thresholds=clamped_to_range(node.arrays["thresholds"],
                                                                    *ranges[node.inputs[0]]))
