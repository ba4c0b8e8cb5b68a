"""From an integer graph to a QONNX inference model that qonnx executes, FINN and hls4ml read.

Each register becomes a QONNX quantizer (docs/arithmetic.md section 11): ``Quant`` (what FINN,
hls4ml and qonnx's transformations match; ``IntQuant``, the same op by its newer name, on
request) with
scale 2**-f, zero-point 0, the register's bit width, ``signed``, ``narrow`` = SAT_SYM and
its rounding by its QONNX name; a FLOOR register that shifts right is a ``Trunc`` (v2).
Weights, biases and a folded BatchNorm's multipliers and offsets are float32 constants, each
behind its own IntQuant. What QONNX cannot say is refused with the layer named: a rounding or
overflow it has no name for (HALF_UP, STOCHASTIC, WRAP), a constant float32 cannot hold, an
adder layer. A narrow accumulator, and the integer BatchNorm's division, are exported only with
``allow_inexact``, and the model's metadata says so (``wageubn_sim.inexact``).

An unbounded register is given the narrowest bit width its static range needs (`ranges`), so
that the IntQuant never clamps, and is marked so in its doc_string: the import reads it back
unbounded. qonnx executes in float32: exact while every value stays below 2**24.
"""
from __future__ import annotations

import json

import numpy as np

from ..engine.ops.thresholds import clamped_to_range
from ..engine.ranges import fit_range
from ..engine.registry import OPS
from ..execution.ranges import value_ranges
from ..files.write import write_file_atomically
from ..fixedpoint.format import Format, bits_needed
from ..fixedpoint.modes import ROUNDING_NAMES, Overflow, Rounding
from ..graph.tail import FloatTail
from ..graph.ir import Graph, unique_name
from ..version import __version__
from .protocol import ACCUMULATORS_KEY, INEXACT_KEY, INPUT_REGISTER, MARKER, OWN_NODE, RESCALE, UNBOUNDED

ONNX_OPSET = 13  # FINN and hls4ml read opset 13; Resize, Clip and the rest have their final form
QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_OPSET = 2  # Trunc version 2 (output scale and rounding_mode)
FLOAT32_MIN_EXPONENT = -149  # the smallest float32, 2**-149 (subnormal)
FLOAT32_MAX_EXPONENT = 127


class ExportError(ValueError):
    """The graph holds something QONNX cannot express (exactly)."""


def to_qonnx(graph: Graph, path=None, batch: int = 1, allow_inexact: bool = False,
             overwrite: bool = False, int_quant: bool = False):
    """The QONNX model of ``graph`` (an onnx.ModelProto), written to ``path`` if given
    (atomically; an existing file only with ``overwrite``). ``batch``: the batch size the
    model declares (qonnx executes only the declared shapes). ``int_quant``: name the
    quantizers ``IntQuant`` rather than ``Quant``."""
    import onnx
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be a positive int")
    model = _Exporter(graph, batch, allow_inexact, "IntQuant" if int_quant else "Quant").model()
    onnx.checker.check_model(model)
    if path is not None:
        write_file_atomically(path, model.SerializeToString(), overwrite)
    return model


def _float32_exact(ints: np.ndarray, frac: int) -> bool:
    """Whether every ints * 2**-frac is exactly a float32."""
    if not np.any(ints):
        return True
    if int(np.abs(ints).max()) >= 1 << 53:  # float32 holds 24 significant bits at most anyway
        return False
    values = np.ldexp(ints.astype(np.float64), -frac)  # exact: ints < 2**53, |frac| <= 1000
    with np.errstate(over="ignore"):
        as32 = values.astype(np.float32)
    return bool(np.all(np.isfinite(values))) and np.array_equal(as32.astype(np.float64), values)


def _float32_parts(value: int) -> list:
    """Integers of at most 24 significant bits (float32s) whose sum is ``value``."""
    parts = []
    while value:
        drop = max(abs(value).bit_length() - 24, 0)
        part = (abs(value) >> drop << drop) * (1 if value > 0 else -1)
        parts.append(part)
        value -= part
    return parts or [0]


class _Exporter:
    def __init__(self, graph: Graph, batch: int, allow_inexact: bool, quant_op: str = "Quant"):
        self.graph, self.batch, self.allow_inexact, self.quant_op = graph, batch, allow_inexact, quant_op
        self.ranges = value_ranges(graph)
        self.raw = value_ranges(graph, before_output_register=True)
        self.nodes, self.initializers, self.infos, self.scalars = [], {}, [], {}
        self.names = {i.name for i in graph.inputs} | {n.name for n in graph.nodes}
        self.fracs = {graph.inputs[0].name: graph.inputs[0].fmt.frac_bits}
        self.fracs.update({n.name: n.out_fmt.frac_bits for n in graph.nodes})
        self.inexact: list = []
        self.accumulators: dict = {}

    def model(self):
        from onnx import TensorProto, helper
        spec = self.graph.inputs[0]
        tensors = {spec.name: self._input(spec)}
        shapes = {spec.name: spec.shape}
        shapes.update({n.name: n.out_shape for n in self.graph.nodes})
        for node in self.graph.nodes:
            handler = getattr(self, f"_{node.op}", None)
            if handler is None:
                raise ExportError(f"layer {node.name} ({node.op}) has no QONNX form")
            handler(node, [tensors[i] for i in node.inputs], [shapes[i] for i in node.inputs])
            tensors[node.name] = node.name
        out = self.graph.outputs[0]
        out_shape = [self.batch, *shapes[out]]
        if "float_tail" in self.graph.meta:
            out = self._float_tail(FloatTail.from_json(self.graph.meta["float_tail"]), out, shapes[out])
        graph = helper.make_graph(
            self.nodes, "wageubn_sim",
            [helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, [self.batch, *spec.shape])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            list(self.initializers.values()),
            value_info=[i for i in self.infos if i.name != out])
        model = helper.make_model(graph, producer_name="wageubn-sim", producer_version=__version__,
                                  opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                 helper.make_opsetid(QONNX_DOMAIN, QONNX_OPSET)])
        props = {"wageubn_sim.graph_input_format": spec.fmt.describe()}
        if self.inexact:
            props[INEXACT_KEY] = "; ".join(self.inexact)
        if self.accumulators:
            props[ACCUMULATORS_KEY] = json.dumps(self.accumulators, sort_keys=True)
        helper.set_model_props(model, props)
        return model

    def _float_tail(self, tail: FloatTail, x: str, shape) -> str:
        """The float tail after the output's value (integers times 2**-f): a Mul by the rest of
        its unit, an Add of its offset, then its ops, in float32 as qonnx computes them; the
        import reads them back as the same tail."""
        frac = self.fracs[x]
        channels = lambda values: np.array(values, np.float32).reshape(
            (1, -1) + (1,) * (len(shape) - 1) if len(values) > 1 else (1,))
        factor = [np.ldexp(u, frac) for u in tail.unit]
        steps = ([("Mul", factor)] if any(f != 1.0 for f in factor) else []) + \
            ([("Add", list(tail.offset))] if any(tail.offset) else []) + \
            [(o.op, list(o.operand)) for o in tail.ops]
        for op, operand in steps:
            if op in ("Max", "Min"):  # a Clip of one bound, a scalar
                if len(operand) > 1:
                    raise ExportError(f"the float tail's {op} has per-channel bounds; Clip takes one")
                bound = self._scalar(float(operand[0]))
                inputs, onnx_op = ([x, bound] if op == "Max" else [x, "", bound]), "Clip"
            else:
                c = self._initializer(f"tail/{op.lower()}/operand", channels(operand))
                inputs, onnx_op = ([c, x], "Sub") if op == "SubFrom" else ([x, c], op)
            name = self._name(f"tail/{op.lower()}")
            x = self._node(onnx_op, inputs, name, name, shape)
        return x

    # ---- building blocks ---------------------------------------------------------------------
    def _name(self, base: str) -> str:
        return unique_name(base, self.names)

    def _node(self, op, inputs, output, name, shape, domain="", doc="", batched=True, **attrs):
        """Append a node and its output's value_info (qonnx executes only declared shapes)."""
        from onnx import TensorProto, helper
        node = helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs)
        if doc:
            node.doc_string = doc
        self.nodes.append(node)
        full = [self.batch, *shape] if batched else list(shape)
        self.infos.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, full))
        return output

    def _initializer(self, base, array) -> str:
        from onnx import numpy_helper
        name = self._name(base)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def _scalar(self, value: float) -> str:
        """A float32 scalar initializer, one per value."""
        if value not in self.scalars:
            self.scalars[value] = self._initializer(f"const/{value!r}", np.array(value, np.float32))
        return self.scalars[value]

    def _scale(self, frac: int, where: str) -> str:
        if not FLOAT32_MIN_EXPONENT <= -frac <= FLOAT32_MAX_EXPONENT:
            raise ExportError(f"{where}: scale 2**{-frac} is not a float32")
        return self._scalar(float(2.0 ** -frac))

    @staticmethod
    def _qonnx_rounding(rounding: Rounding, where: str) -> str:
        name = ROUNDING_NAMES[Rounding(rounding)]["QONNX"]
        if name is None:
            raise ExportError(f"{where}: rounding {Rounding(rounding).name} has no QONNX name; "
                              "QONNX has HALF_EVEN (ROUND), HALF_AWAY (HALF_UP), TOWARD_ZERO (DOWN), FLOOR")
        return name

    def _register(self, x: str, x_frac: int | None, in_range: tuple | None, out: str, name: str,
                  shape, fmt: Format, rounding, overflow, marks=()) -> str:
        """The tensor ``x`` (integers in ``in_range`` on 2**-x_frac; x_frac None: off any grid,
        as a mean) held in a register: an IntQuant, or a Trunc for a FLOOR shift right (but
        not for an input register, which the import takes as an IntQuant)."""
        where = f"layer {name}"
        overflow = Overflow(overflow)
        if overflow == Overflow.WRAP and fmt.bounded:
            raise ExportError(f"{where}: a WRAP register has no QONNX form (Quant clamps)")
        narrow = overflow == Overflow.SAT_SYM and fmt.signed
        marks = list(marks)
        bits = fmt.bits
        if bits is None:  # as wide as its static range needs: it never clamps
            lo, hi = fit_range(*in_range, x_frac, fmt, rounding, overflow) if x_frac is not None \
                else in_range
            bits = bits_needed(lo, hi, True, narrow) if fmt.signed or lo < 0 else bits_needed(lo, hi, False)
            marks.append(UNBOUNDED)
            if bits > 62 or (not fmt.signed and lo < 0):
                raise ExportError(f"{where}: its unbounded register may hold {lo}..{hi}, which no "
                                  f"{'signed' if fmt.signed else 'unsigned'} QONNX width below 62 bits holds")
        doc = MARKER + " " + ", ".join(marks) if marks else ""
        attrs = dict(signed=int(fmt.signed), narrow=int(narrow))
        rounding = Rounding(rounding)
        if rounding == Rounding.FLOOR and x_frac is not None and fmt.frac_bits <= x_frac \
                and INPUT_REGISTER not in marks:
            in_bits = bits_needed(*in_range, True)
            return self._node("Trunc", [x, self._scale(x_frac, where), self._scalar(0.0),
                                        self._scalar(float(min(in_bits, 62))),
                                        self._scale(fmt.frac_bits, where), self._scalar(float(bits))],
                              out, name, shape, QONNX_DOMAIN, doc, rounding_mode="FLOOR", **attrs)
        return self._node(self.quant_op, [x, self._scale(fmt.frac_bits, where), self._scalar(0.0),
                                       self._scalar(float(bits))],
                          out, name, shape, QONNX_DOMAIN, doc,
                          rounding_mode=self._qonnx_rounding(rounding, where), **attrs)

    def _const(self, layer: str, role: str, ints: np.ndarray, fmt: Format, shape=None) -> str:
        """A constant's integers as a float32 initializer behind its own IntQuant."""
        where = f"layer {layer}: {role}"
        ints = np.asarray(ints, np.int64)
        if not _float32_exact(ints, fmt.frac_bits):
            widest = int(np.abs(ints).max(initial=0)).bit_length()
            raise ExportError(f"{where} ({widest} bits on 2**{-fmt.frac_bits}) is not exactly a float32 "
                              "(24 significant bits); fold with fewer multiplier bits, or use narrower formats")
        values = (ints.astype(np.float64) * 2.0 ** -fmt.frac_bits).astype(np.float32)
        if shape is not None:
            values = values.reshape(shape)
        raw = self._initializer(f"{layer}/{role}/float", values)
        lo, hi = (int(ints.min()), int(ints.max())) if ints.size else (0, 0)
        bits = fmt.bits if fmt.bounded else bits_needed(lo, hi, fmt.signed)
        out = self._name(f"{layer}/{role}")
        return self._node(self.quant_op, [raw, self._scale(fmt.frac_bits, where), self._scalar(0.0),
                                       self._scalar(float(bits))], out, out, values.shape, QONNX_DOMAIN,
                          batched=False, signed=int(fmt.signed), narrow=0, rounding_mode="ROUND")

    def _input_register(self, node, x, shape) -> str:
        """A layer's input, held in its input register (iostrict) where it has one."""
        p = node.params
        if p.input_register is None:
            return x
        source = node.inputs[0]
        frac = self.fracs[source]
        return self._register(x, frac, self.ranges[source], self._name(f"{node.name}/input"),
                              self._name(f"{node.name}/input_register"), shape, p.input_register,
                              p.rounding, Overflow.SAT_SYM, [INPUT_REGISTER])

    def _out(self, node, raw_tensor: str, shape):
        """A layer's raw value (the tensor ``raw_tensor``) held in its output register."""
        register = OPS[node.op].output_register(node.params)
        lo, hi, frac = self.raw[node.name]
        own = node.op == "requantize"  # a node of its own, marked so that no layer takes it
        name = node.name if own else self._name(f"{node.name}/output_register")
        return self._register(raw_tensor, frac, (lo, hi), node.name, name, shape, register.fmt,
                              register.rounding, register.overflow, [OWN_NODE] if own else [])

    def _raw_name(self, node) -> str:
        """The layer's tensor before its output register (its own name without one)."""
        registered = OPS[node.op].output_register(node.params) is not None
        return self._name(f"{node.name}/raw") if registered else node.name

    def _input(self, spec) -> str:
        """The float input quantized as `GraphInput.quantize` does: half to even, saturating,
        or by its thresholds (a MultiThreshold on float64 thresholds: exact for any float)."""
        q = self._name(f"{spec.name}/quantized")
        if spec.levels is not None:
            levels = spec.levels
            table = np.array(levels.thresholds, np.float64)
            return self._multithreshold(spec.name, spec.shape, np.array(levels.signs), table,
                                        levels.first, levels.step, spec.fmt, q, q, f"{spec.name}")
        return self._register(spec.name, None, None, q, q, spec.shape, spec.fmt, Rounding.HALF_EVEN,
                              Overflow.SAT)

    def _multithreshold(self, x, shape, signs, table, first, step, fmt, out, name, base) -> str:
        """A MultiThreshold counting the thresholds ``table`` (real values) that signs * x
        reaches (a Mul by the per-channel directions before it where one is -1), its levels
        out_scale * count + out_bias on ``fmt``'s grid."""
        if np.any(signs < 0):
            factors = self._initializer(f"{base}/directions",
                                        signs.astype(np.float32).reshape((1, len(signs)) + (1,) * (len(shape) - 1)))
            x = self._node("Mul", [x, factors], self._name(f"{base}/directed"),
                           self._name(f"{base}/direction"), shape)
        values = self._initializer(f"{base}/thresholds", table)
        dtype = "BINARY" if (fmt.bits == 1 and not fmt.signed) else \
            "BIPOLAR" if (first, step, table.shape[1]) == (-1, 2, 1) else \
            f"{'INT' if fmt.signed else 'UINT'}{fmt.bits}"
        return self._node("MultiThreshold", [x, values], out, name, shape, QONNX_DOMAIN,
                          out_dtype=dtype, out_scale=float(step * 2.0 ** -fmt.frac_bits),
                          out_bias=float(first * 2.0 ** -fmt.frac_bits),
                          data_layout="NCHW" if len(shape) == 3 else "NC")

    def _accumulator(self, node):
        acc = node.params.accumulator
        if acc.bits is None:
            return
        if not self.allow_inexact:
            raise ExportError(f"layer {node.name}: its {acc.bits}-bit {acc.overflow.name} accumulator "
                              "has no QONNX form (qonnx sums exactly, then in float32); give "
                              "--allow-inexact to export it as exact")
        self.inexact.append(f"{node.name}: {acc.bits}-bit accumulator exported as exact")
        self.accumulators[node.name] = acc.to_dict()

    # ---- ops ----------------------------------------------------------------------------------
    def _mac_core(self, node, ins, in_shapes) -> str:
        p = node.params
        x = self._input_register(node, ins[0], in_shapes[0])
        self._accumulator(node)
        one_d = node.op == "conv2d" and len(in_shapes[0]) == 2  # (C, L): a 1-D Conv, weights (O, I, K)
        weight = node.arrays["weight"][:, :, 0, :] if one_d else node.arrays["weight"]
        inputs = [x, self._const(node.name, "weight", weight, p.weight_fmt)]
        if "bias" in node.arrays:
            inputs.append(self._const(node.name, "bias", node.arrays["bias"], p.bias_fmt))
        acc = self._name(f"{node.name}/accumulator") if (p.out_fmt is not None or node.op == "conv2d_bn") \
            else node.name
        if node.op == "linear":
            return self._node("Gemm", inputs, acc, node.name, node.out_shape, transB=1)
        ph, pw = p.padding
        axes = slice(1, None) if one_d else slice(None)  # a 1-D Conv leaves out the height
        transposed = {"output_padding": list(p.output_padding)} if node.op == "conv_transpose2d" else {}
        return self._node("ConvTranspose" if transposed else "Conv", inputs, acc, node.name, node.out_shape,
                          kernel_shape=list(weight.shape[2:]), strides=list(p.stride[axes]),
                          pads=([pw, pw] if one_d else [ph, pw, ph, pw]), dilations=list(p.dilation[axes]),
                          group=p.groups, **transposed)

    def _conv2d(self, node, ins, in_shapes):
        acc = self._mac_core(node, ins, in_shapes)
        if acc != node.name:
            self._out(node, acc, node.out_shape)

    _linear = _conv_transpose2d = _conv2d

    def _conv2d_bn(self, node, ins, in_shapes):
        p = node.params
        acc = self._mac_core(node, ins, in_shapes)
        channels = node.arrays["weight"].shape[0]
        m = self._const(node.name, "multiplier", node.arrays["multiplier"],
                        Format(None, p.multiplier_frac), (1, channels, 1, 1))
        o = self._const(node.name, "offset", node.arrays["offset"],
                        Format(None, p.multiplier_frac + p.accumulator_frac), (1, channels, 1, 1))
        product = self._node("Mul", [acc, m], self._name(f"{node.name}/product"),
                             self._name(f"{node.name}/multiply"), node.out_shape)
        scaled = node.name if p.out_fmt is None else self._name(f"{node.name}/scaled")
        self._node("Add", [product, o], scaled, self._name(f"{node.name}/offset_add"), node.out_shape)
        if p.out_fmt is not None:
            self._out(node, scaled, node.out_shape)

    def _adder2d(self, node, ins, in_shapes):
        raise ExportError(f"layer {node.name}: an adder layer (sum of |x - w|) has no QONNX form")

    def _activation(self, node, ins, in_shapes):
        p = node.params
        x = self._input_register(node, ins[0], in_shapes[0])
        raw = self._raw_name(node)
        if p.ceiling is None:
            self._node("Relu", [x], raw, node.name, node.out_shape)
        else:
            self._node("Clip", [x, self._scalar(0.0), self._scalar(float(p.ceiling))], raw, node.name,
                       node.out_shape)
        if raw != node.name:
            self._out(node, raw, node.out_shape)

    def _max_pool2d(self, node, ins, in_shapes):
        p = node.params
        ph, pw = p.padding
        self._node("MaxPool", ins, node.name, node.name, node.out_shape, kernel_shape=list(p.kernel),
                   strides=list(p.stride), pads=[ph, pw, ph, pw], dilations=list(p.dilation))

    def _avg_pool2d(self, node, ins, in_shapes):
        p = node.params
        if p.divisor_override is not None or p.dilation != (1, 1):
            raise ExportError(f"layer {node.name}: divisor_override or dilation has no ONNX "
                              "AveragePool form (opset 13)")
        ph, pw = p.padding
        raw = self._name(f"{node.name}/mean")
        self._node("AveragePool", ins, raw, node.name, node.out_shape, kernel_shape=list(p.kernel),
                   strides=list(p.stride), pads=[ph, pw, ph, pw],
                   count_include_pad=int(p.count_include_pad))
        # the mean is off any grid: always an IntQuant, never a Trunc
        self._register(raw, None, self.ranges[node.name], node.name,
                       self._name(f"{node.name}/output_register"), node.out_shape, p.out_fmt,
                       p.rounding, p.overflow)

    def _add(self, node, ins, in_shapes):
        raw = self._raw_name(node)
        self._node("Add", ins, raw, node.name, node.out_shape)
        if raw != node.name:
            self._out(node, raw, node.out_shape)

    def _concat(self, node, ins, in_shapes):
        raw = self._raw_name(node)
        self._node("Concat", ins, raw, node.name, node.out_shape, axis=1)
        if raw != node.name:
            self._out(node, raw, node.out_shape)

    def _flatten(self, node, ins, in_shapes):
        self._node("Flatten", ins, node.name, node.name, node.out_shape, axis=1)

    def _requantize(self, node, ins, in_shapes):
        self._out(node, ins[0], node.out_shape)

    def _upsample(self, node, ins, in_shapes):
        sh, sw = node.params.scale
        scales = self._initializer(f"{node.name}/scales", np.array([1, 1, sh, sw], np.float32))
        self._node("Resize", [ins[0], "", scales], node.name, node.name, node.out_shape, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def _thresholds(self, node, ins, in_shapes):
        """FINN's MultiThreshold (qonnx executes it): the thresholds on the input's grid, each
        clamped to the input's static range (the same levels for every value in it), a Mul by
        the per-channel directions before it where one is -1, the levels as out_scale * count
        + out_bias."""
        p = node.params
        source = node.inputs[0]
        table = clamped_to_range(node.arrays["thresholds"], *self.ranges[source])
        frac = self.fracs[source]
        if not _float32_exact(table, frac):
            raise ExportError(f"layer {node.name}: thresholds of {int(np.abs(table).max()).bit_length()} "
                              "bits are not float32 (24 significant bits); its input is too wide for "
                              "MultiThreshold")
        real = (table.astype(np.float64) * 2.0 ** -frac).astype(np.float32)
        self._multithreshold(ins[0], in_shapes[0], node.arrays["signs"], real, p.first, p.step, p.out_fmt,
                             node.name, node.name, node.name)

    def _rescale(self, node, ins, in_shapes):
        """Inexact (qonnx sums x * M + O in float32): per channel a Mul by M 2**(f_in - s - f_out)
        and an Add of O 2**(-s - f_out), a Clip at the clamp's levels, and an IntQuant on the
        output's grid with the layer's rounding, marked with its multiplier width: its import
        takes the chain back as these multipliers."""
        p = node.params
        where = f"layer {node.name}"
        if p.mode != "single":
            raise ExportError(f"{where}: TFLite's double rounding has no QONNX form")
        if not self.allow_inexact:
            raise ExportError(f"{where}: its fixed-point multipliers have no exact QONNX form (qonnx "
                              "computes x * M + O in float32); give --allow-inexact to export them")
        self.inexact.append(f"{node.name}: {p.multiplier_bits}-bit multipliers computed in float32")
        f_in, f_out = self.fracs[node.inputs[0]], p.out_fmt.frac_bits
        shape = (1, -1) + (1,) * (len(in_shapes[0]) - 1)
        mults, shifts = node.arrays["multiplier"].tolist(), node.arrays["shift"].tolist()
        if not all(_float32_exact(np.array([m]), 0) for m in mults):
            raise ExportError(f"{where}: multipliers of more than 24 significant bits are not float32")
        factors = [np.ldexp(float(m), f_in - s - f_out) for m, s in zip(mults, shifts)]
        y = self._node("Mul", [ins[0], self._initializer(f"{node.name}/multiplier",
                                                         np.array(factors, np.float32).reshape(shape))],
                       self._name(f"{node.name}/product"), self._name(f"{node.name}/multiply"), node.out_shape)
        # each offset as float32 parts of 24 significant bits whose sum is exact (an import
        # sums them exactly; qonnx in float32)
        parts = [_float32_parts(o) for o in node.arrays["offset"].tolist()]
        for k in range(max(len(p_) for p_ in parts)):
            addend = [np.ldexp(float(p_[k]) if k < len(p_) else 0.0, -s - f_out) for p_, s in zip(parts, shifts)]
            y = self._node("Add", [y, self._initializer(f"{node.name}/offset",
                                                        np.array(addend, np.float32).reshape(shape))],
                           self._name(f"{node.name}/sum"), self._name(f"{node.name}/offset_add"), node.out_shape)
        low, high = p.levels
        y = self._node("Clip", [y, self._scalar(float(np.ldexp(low, -f_out))), self._scalar(float(np.ldexp(high, -f_out)))],
                       self._name(f"{node.name}/clamped"), self._name(f"{node.name}/clip"), node.out_shape)
        self._register(y, None, None, node.name, node.name, node.out_shape, p.out_fmt, p.rounding, p.overflow,
                       [f"{RESCALE}{p.multiplier_bits}"])

    def _batchnorm2d(self, node, ins, in_shapes):
        """Inexact: qonnx divides in float32 before the xhat register rounds."""
        p = node.params
        if not self.allow_inexact:
            raise ExportError(f"layer {node.name}: the integer BatchNorm divides exactly, qonnx in "
                              "float; fold it (compile --fold-bn 16), or give --allow-inexact")
        self.inexact.append(f"{node.name}: BatchNorm's division done in float")
        x = self._input_register(node, ins[0], in_shapes[0])
        c = len(node.arrays["mean"])
        shape4 = (1, c, 1, 1)
        mean = self._const(node.name, "mean", node.arrays["mean"], p.mean_fmt, shape4)
        std = self._const(node.name, "std", node.arrays["std"], p.std_fmt, shape4)
        d = self._node("Sub", [x, mean], self._name(f"{node.name}/centred"), self._name(f"{node.name}/sub"),
                       node.out_shape)
        r = self._node("Div", [d, std], self._name(f"{node.name}/ratio"), self._name(f"{node.name}/div"),
                       node.out_shape)
        xhat_fmt = p.xhat_fmt if p.xhat_fmt.bounded else Format(32, p.xhat_fmt.frac_bits)
        y = self._register(r, None, None, self._name(f"{node.name}/xhat"),
                           self._name(f"{node.name}/xhat_register"), node.out_shape, xhat_fmt,
                           Rounding.HALF_EVEN, p.overflow)
        if "gamma" in node.arrays:
            g = self._const(node.name, "gamma", node.arrays["gamma"], p.gamma_fmt, shape4)
            y = self._node("Mul", [y, g], self._name(f"{node.name}/scaled"), self._name(f"{node.name}/mul"),
                           node.out_shape)
        raw = self._raw_name(node)
        if "beta" in node.arrays:
            b = self._const(node.name, "beta", node.arrays["beta"], p.beta_fmt, shape4)
            self._node("Add", [y, b], raw, self._name(f"{node.name}/add"), node.out_shape)
        else:
            self._node("Identity", [y], raw, self._name(f"{node.name}/identity"), node.out_shape)
        if raw != node.name:
            self._out(node, raw, node.out_shape)
