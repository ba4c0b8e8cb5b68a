"""From a QONNX model (Brevitas, FINN, hls4ml, or this tool's export) to an integer graph.

Every QONNX quantizer becomes integers and registers of the engine, exactly, or is refused
with the node named (docs/arithmetic.md section 11):

- ``Quant``/``IntQuant`` with a power-of-two scale 2**-f and a zero zero-point is the format
  (bits, f) with its rounding (ROUND -> HALF_EVEN, HALF_UP -> HALF_AWAY, DOWN -> TOWARD_ZERO,
  FLOOR -> FLOOR) and its clamp (narrow signed -> SAT_SYM, else SAT). On a constant it gives
  the constant's integers (per-channel scales aligned exactly to the finest grid); on a tensor
  it is a register: the output register of the layer before it where that layer has a free
  one and no other reader, the input register of the layer after it (a narrow Quant marked
  as one by the exporter, or one that nothing before can hold), else a ``requantize`` node.
- ``Trunc`` (version 2) is such a register from its input scale to its output scale.
- The float ``BatchNormalization`` after a Conv is folded into it with 16-bit multipliers,
  as ``fold_batchnorm`` folds: not bit-exact to a float execution, and said so in the node's
  source.

The walk (`_Importer`) keeps the bookkeeping: the tensors computed so far, the constants, the
registers waiting for the layer after them; each node goes to its op type's handler
(`handlers`), and the rewrites are `passes`. The model is read by `reader`.
"""
from __future__ import annotations

import dataclasses
import warnings
from fractions import Fraction

import numpy as np

from ..engine.ops.conv2d import Conv2dParams
from ..engine.ops.requantize import RequantizeParams
from ..engine.registers import Accumulator
from ..execution.run import run_node
from ..fixedpoint.format import MAX_BITS, MAX_UNSIGNED_BITS, Format
from ..fixedpoint.modes import Overflow, Rounding
from ..graph.ir import Graph, GraphInput, Node, unique_name
from ..fixedpoint.chains import Affine
from .floats import float_tail, parse_rescale, power_of_two
from .handlers import HANDLERS, ONNX, QONNX, supported
from .passes import apply_accumulators, check_unbounded, clamp_thresholds, take_output_register
from .protocol import ONNX_DOMAINS, QONNX_DOMAINS, ROUNDING_FROM_QONNX, UNBOUNDED
from .reader import (UnsupportedModel, attributes, check_model, int_attr, marks, module_path, quantizer_path,
                     power_of_two_exponent, read_qonnx, str_attr, tensor_array)
from .values import FloatChain, QConst, QuantRegister, Tensor, per_channel


def from_qonnx(model, input_format: Format | None = None, accumulators=None,
               rescale: str | None = None) -> Graph:
    """The integer graph of a QONNX model (a path to an .onnx file, or an onnx.ModelProto).

    ``rescale``: how a float chain becomes integers (docs/arithmetic.md section 12):
    ``thresholds`` (the default: exact, up to 8 output bits; 16-bit multipliers beyond) or
    ``multiplier:BITS``. An inexact choice is listed in the graph's ``meta["inexact"]`` and
    warned (`InexactImport`).

    ``input_format``: the input's format where the model has no Quant on its input (a model
    that has one takes its format from it). ``accumulators``: as for `compile_model`, keyed by
    layer name (the ONNX node's name); default: exact, or what an inexact export recorded.
    """
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = read_qonnx(model)
    else:
        check_model(model, None)
    try:
        bits = parse_rescale(rescale)
    except ValueError as err:
        raise UnsupportedModel(str(err)) from None
    return _Importer(model, input_format, accumulators, bits).run()


class InexactImport(UserWarning):
    """An import that is not bit-exact to the model's float arithmetic (a multiplier chosen)."""


class _Importer:
    def __init__(self, model, input_format, accumulators, rescale_bits=None):
        self.model, self.graph = model, model.graph
        self.opsets = {o.domain: o.version for o in model.opset_import}
        self.input_format, self.accumulators = input_format, accumulators
        self.consts: dict = {}  # onnx name -> float ndarray
        self.qconsts: dict = {}  # onnx name -> QConst
        self.tensors: dict = {}  # onnx name -> Tensor
        self.pending: dict = {}  # onnx name -> (Tensor, QuantRegister, node): a next layer's input register
        self.chains: dict = {}  # onnx name -> FloatChain: a float value no Quant has ended yet
        self.input: GraphInput | None = None
        self.rescale_bits = rescale_bits  # multipliers of this width for every float chain
        self.input_declared = False  # a float input the model reads unquantized: --input-format
        self.inexact: list = []  # what the import could not make exact
        self.absorbed: set = set()  # indices of onnx nodes folded into a layer
        self.nodes: list = []
        self.used_names: set = set()
        self.onnx_tensor: dict = {}  # our node name -> the onnx tensor it equals
        self.value_shapes: dict = {}  # our value name -> shape (no batch)
        self.value_fracs: dict = {}  # our value name -> grid
        self.readers: dict = {}
        for i, node in enumerate(self.graph.node):
            for name in node.input:
                if name:
                    self.readers.setdefault(name, []).append(i)
        for out in self.graph.output:
            self.readers.setdefault(out.name, []).append(-1)

    def run(self) -> Graph:
        if self.graph.sparse_initializer:
            raise UnsupportedModel("the model has sparse initializers; store them dense")
        for t in self.graph.initializer:
            self.consts[t.name] = tensor_array(t, f"initializer {t.name}")
        graph_input = self.graph_input()
        for i, node in enumerate(self.graph.node):
            if i in self.absorbed:
                continue
            self.walk_node(i, node)
        if len(self.graph.output) != 1:
            raise UnsupportedModel(f"the model has {len(self.graph.output)} outputs; the engine "
                                   "runs graphs of one output")
        out = self.graph.output[0].name
        self.flush_pending(out)
        tail = None
        if out in self.chains:  # a float tail: the graph ends at its integer tensor
            self.tensors[out], tail = float_tail(self, out)
        if graph_input.name not in self.value_fracs:
            raise UnsupportedModel(f"the input {graph_input.name} is never quantized: a Quant must "
                                   "end its float chain")
        if out not in self.tensors or self.tensors[out].value == graph_input.name:
            raise UnsupportedModel(f"the model's output {out} is not computed by any supported layer")
        apply_accumulators(self)
        meta = {"source": "qonnx", "qonnx_tensors": self.onnx_tensor}
        scaled = {t.value: [float(v).hex() for v in t.scale] for t in self.tensors.values()
                  if t.scale is not None}
        if scaled:  # what one integer of these values is worth (float scales, exact in float64)
            meta["qonnx_scales"] = scaled
        if self.input_declared:  # compare gives qonnx the float input itself
            meta["input_declared"] = True
        if tail is not None:  # float ops after the last integer tensor, as the reference does them
            meta["float_tail"] = tail.to_json()
            self.inexact.append(f"the float tail {tail.describe()} after the last integer tensor is "
                                "computed in float32 as the model's runtime does it, not in integers")
        if self.inexact:
            meta["inexact"] = self.inexact
            for note in self.inexact:
                warnings.warn(note, InexactImport, stacklevel=3)
        graph = Graph([graph_input], self.nodes, [self.tensors[out].value], meta)
        check_unbounded(self, graph)
        clamp_thresholds(graph)
        return graph.check()

    def where(self, i, node) -> str:
        """A node in messages: its name, op type, and the Brevitas module or quantizer it came
        from where the export recorded one (``a1.act_quant``)."""
        path = quantizer_path(node)
        return f"node {node.name or '#' + str(i)} ({node.op_type}{', ' + path if path else ''})"

    def walk_node(self, i, node):
        where = self.where(i, node)
        domain, op = node.domain, node.op_type
        kind = QONNX if domain in QONNX_DOMAINS else ONNX if domain in ONNX_DOMAINS else None
        if (kind, op) not in HANDLERS:
            raise UnsupportedModel(f"{where} of domain {domain or 'ai.onnx'} is not supported "
                                   f"(QONNX's ops are in {QONNX_DOMAINS[0]}). Supported: {supported()}")
        handler, (low, high) = HANDLERS[(kind, op)]
        if not low <= len(node.input) <= high or not node.output or not node.output[0] \
                or (low and not node.input[0]):
            raise UnsupportedModel(f"{where}: {len(node.input)} inputs and {len(node.output)} outputs; "
                                   f"{op} takes {low}..{high} inputs and gives an output")
        handler(self, i, node, where, attributes(node, where))

    def tensor(self, name, where, role="input", scaled=False) -> Tensor:
        """The integer tensor ``name``; ``scaled``: the op computes on integers of a float scale
        as well (it passes the scale on)."""
        if name in self.pending:  # a register no layer took: it becomes a node of its own
            self.flush_pending(name)
        if name in self.chains:
            raise UnsupportedModel(f"{where}: its {role} {name} is a float value (after "
                                   f"{self.chains[name].describe()}) that no Quant "
                                   "has quantized; the engine computes integers: end the float chain "
                                   "with a Quant before this op")
        if name in self.tensors:
            t = self.tensors[name]
            if t.scale is not None and not scaled:
                raise UnsupportedModel(f"{where}: its {role} {name} has float scales (a float-scale "
                                       "Quant before it); this op computes on power-of-two grids "
                                       "only: quantize its input with a power-of-two scale")
            return t
        if name in self.consts or name in self.qconsts:
            raise UnsupportedModel(f"{where}: its {role} {name} is a constant; the engine computes "
                                   "this op on the network's values only")
        raise UnsupportedModel(f"{where} reads {name} before it is computed (not a topologically "
                               "sorted model?)")

    def const(self, name, where, role) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModel(f"{where}: its {role} {name or '(none)'} must be a constant")
        value = self.consts[name]
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise UnsupportedModel(f"{where}: its {role} {name} holds NaN or Inf")
        return value

    def qconst(self, name, where, role) -> QConst:
        if name in self.qconsts:
            return self.qconsts[name]
        hint = ("; quantize it (a Quant before the layer)" if name in self.consts else "")
        raise UnsupportedModel(f"{where}: its {role} {name} is not a quantized constant{hint}")

    def unique(self, i, node) -> str:
        return self.unique_name(module_path(node) or node.name or f"{node.op_type}_{i}")

    def unique_name(self, base: str) -> str:
        return unique_name(base, self.used_names)

    def emit(self, node: Node, onnx_out: str, where: str, scale=None) -> Node:
        """Append a node, derive its shape and grid, and let it take the register after it
        (``scale``: the float scales of its integers)."""
        self.infer(node, where)
        self.nodes.append(node)
        self.bind(node, onnx_out, scale)
        return node

    def infer(self, node: Node, where: str):
        ins = [(np.zeros((0, *self.shape_of(v)), np.int64), self.frac_of(v)) for v in node.inputs]
        try:
            out = run_node(node, ins)
        except (ValueError, OverflowError) as err:
            raise UnsupportedModel(f"{where}: {err}") from None
        node.out_shape, node.out_fmt = tuple(out.q.shape[1:]), out.fmt

    def shape_of(self, value):
        return self.value_shapes[value]

    def frac_of(self, value):
        return self.value_fracs[value]

    def bind(self, node: Node, onnx_out: str, scale=None):
        self.value_shapes[node.name] = node.out_shape
        self.value_fracs[node.name] = node.out_fmt.frac_bits
        self.tensors[onnx_out] = Tensor(node.name, node.out_shape, node.out_fmt.frac_bits, scale)
        self.onnx_tensor[node.name] = onnx_out
        if scale is None:
            take_output_register(self, node, onnx_out)

    def fixed_point_quant(self, q) -> bool:
        """Whether the Quant/IntQuant/Trunc ``q`` has one power-of-two scale and a zero
        zero-point: an engine format (else a float chain's end: float scales, a zero-point)."""
        if q.op_type == "Trunc" or len(q.input) < 3 or q.input[1] not in self.consts:
            return True
        scale = self.consts[q.input[1]].astype(np.float64).ravel()
        zero = self.consts.get(q.input[2])
        return scale.size > 0 and bool(np.all(scale == scale[0])) and \
            power_of_two(Fraction(float(scale[0]))) is not None and \
            (zero is None or bool(np.all(zero.astype(np.float64) == 0)))

    def sole_reader(self, name):
        readers = self.readers.get(name, [])
        if len(readers) != 1 or readers[0] < 0:
            return None
        return readers[0], self.graph.node[readers[0]]

    def register_of(self, i, node, where) -> QuantRegister:
        """The register a Quant/IntQuant/Trunc node stands for (its input may be anything)."""
        trunc = node.op_type == "Trunc"
        if trunc and self.opsets.get(node.domain, 1) < 2:
            raise UnsupportedModel(f"{where}: Trunc version 1 (domain {node.domain} opset "
                                   f"{self.opsets.get(node.domain, 1)}) is not supported; export "
                                   "with Trunc version 2")
        signed, overflow, rounding, bits = self.quantizer(node, where)
        scale_in = self.scalar_scale(node.input[1], where)
        frac = self.scalar_scale(node.input[4], where) if trunc else scale_in
        notes = marks(node)
        fmt = Format(None if UNBOUNDED in notes else bits, frac, signed)
        return QuantRegister(fmt, rounding, overflow, scale_in if trunc else None, notes)

    def quantizer(self, node, where, zero_point: bool = False) -> tuple:
        """(signed, overflow, rounding, bits) of a Quant/IntQuant/Trunc; its zero-point checked
        (zero, unless ``zero_point``: the caller reads it with `zero_point`)."""
        trunc = node.op_type == "Trunc"
        if len(node.input) != (6 if trunc else 4) or len(node.output) != 1:
            raise UnsupportedModel(f"{where}: {len(node.input)} inputs; "
                                   f"{'Trunc takes 6' if trunc else 'Quant takes 4'}")
        attrs = attributes(node, where)
        for k in ("signed", "narrow") if not trunc else ():
            if k not in attrs:  # qonnx itself requires both
                raise UnsupportedModel(f"{where}: attribute {k} is missing; QONNX requires it")
        signed = bool(int_attr(attrs, "signed", 1, where, {0, 1}))
        narrow = bool(int_attr(attrs, "narrow", 0, where, {0, 1}))
        if not signed and narrow:
            raise UnsupportedModel(f"{where}: an unsigned narrow Quant (0..2**b-2) has no engine "
                                   "format; use narrow=0")
        mode = str_attr(attrs, "rounding_mode", "FLOOR" if trunc else "ROUND", where).upper()
        if mode not in ROUNDING_FROM_QONNX:
            raise UnsupportedModel(f"{where}: rounding_mode {mode} has no engine rounding; "
                                   f"supported: {', '.join(ROUNDING_FROM_QONNX)}")
        if not zero_point and self.zero_point(node, where) != 0:
            raise UnsupportedModel(f"{where}: zero-point {self.zero_point(node, where)} is not zero; "
                                   "a zero-point is taken where a float chain ends (a Quant of a "
                                   "network value), not here")
        bits = self.bit_width(node.input[5] if trunc else node.input[3], where, signed)
        return signed, Overflow.SAT_SYM if narrow else Overflow.SAT, ROUNDING_FROM_QONNX[mode], bits

    def zero_point(self, node, where) -> int:
        """The Quant's zero-point: one integer for the whole tensor."""
        zero = self.const(node.input[2], where, "zero-point").astype(np.float64)
        if zero.size == 0 or np.any(zero != zero.ravel()[0]) or not np.isfinite(zero.ravel()[0]) \
                or zero.ravel()[0] != np.round(zero.ravel()[0]) or abs(zero.ravel()[0]) > 1 << 32:
            raise UnsupportedModel(f"{where}: zero-point {zero.ravel()[:4].tolist()}; one integer "
                                   "for the whole tensor (|z| <= 2**32)")
        return int(zero.ravel()[0])

    def scalar_scale(self, name, where) -> int:
        scale = self.const(name, where, "scale").astype(np.float64)
        if scale.size == 0 or np.any(scale != scale.ravel()[0]):
            raise UnsupportedModel(f"{where}: per-channel scales on a network value; the engine's "
                                   "formats are per tensor (per-channel scales apply to constants)")
        return power_of_two_exponent(float(scale.ravel()[0]), where)

    def bit_width(self, name, where, signed) -> int:
        width = self.const(name, where, "bit width").astype(np.float64)
        if width.size != 1 or width.ravel()[0] != np.round(width.ravel()[0]):
            raise UnsupportedModel(f"{where}: bit width {width.ravel()[:4].tolist()} is not one integer")
        bits = int(width.ravel()[0])
        low, high = (2, MAX_BITS) if signed else (1, MAX_UNSIGNED_BITS)
        if not low <= bits <= high:
            hint = "; a 1-bit signed Quant is bipolar: use BipolarQuant" if signed and bits == 1 else ""
            raise UnsupportedModel(f"{where}: bit width {bits}; the engine holds {low}..{high} bits "
                                   f"{'signed' if signed else 'unsigned'}{hint}")
        return bits

    def layer_input(self, name, where, takes_register: bool, scaled=False):
        """A layer's input: (Tensor, input register or None, its rounding)."""
        if name in self.pending and takes_register:
            t, reg, _, _ = self.pending.pop(name)
            return t, reg.fmt, reg.rounding
        return self.tensor(name, where, scaled=scaled), None, Rounding.HALF_EVEN

    def flush_pending(self, name):
        if name in self.pending:
            t, reg, q, where = self.pending.pop(name)
            self.requantize(q, t, reg, where)

    def requantize(self, q, t: Tensor, reg: QuantRegister, where):
        """A register no layer holds: a requantize node (Trunc: after one onto its input grid,
        half to even, where the value is finer: Trunc's round(x / scale))."""
        value = t.value
        base = q.name or q.op_type
        if reg.from_frac is not None and t.frac > reg.from_frac:
            pre = Node(self.unique_name(f"{base}.round"), "requantize", [value],
                       RequantizeParams(Format(None, reg.from_frac)), {},
                       f"onnx Trunc {q.name} (its rounding onto the input scale)")
            self.append(pre, where)
            value = pre.name
        node = Node(self.unique_name(base), "requantize", [value],
                    RequantizeParams(reg.fmt, reg.rounding, reg.overflow), {}, f"onnx {q.op_type} {q.name}")
        self.append(node, where)
        self.tensors[q.output[0]] = Tensor(node.name, node.out_shape, node.out_fmt.frac_bits)
        self.onnx_tensor[node.name] = q.output[0]

    def append(self, node: Node, where):
        """Append a node that takes no register after it."""
        self.infer(node, where)
        self.nodes.append(node)
        self.value_shapes[node.name], self.value_fracs[node.name] = node.out_shape, node.out_fmt.frac_bits

    def graph_input(self) -> GraphInput:
        inputs = [v for v in self.graph.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedModel(f"the model has {len(inputs)} inputs {[v.name for v in inputs][:4]}; "
                                   "the engine runs graphs of one input")
        v = inputs[0]
        dims = v.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
        if not dims or any(d is None or d < 1 for d in shape):
            raise UnsupportedModel(f"input {v.name}: shape {[d.dim_value or d.dim_param for d in dims]}; "
                                   "the engine needs a batch axis and fixed sizes after it")
        name = v.name or "input"
        fmt = self.input_format
        reader = self.sole_reader(v.name)
        quant = None
        quant_read = reader is not None and reader[1].domain in QONNX_DOMAINS and \
            reader[1].op_type in ("Quant", "IntQuant")
        if fmt is None and (not quant_read or not self.fixed_point_quant(reader[1])):
            # float input: its chain (preprocessing, then a Quant) is the input's quantization
            graph_input = self.input = GraphInput(name, shape, Format(8, 0))  # set by its Quant
            try:
                graph_input.check_size()
            except ValueError as err:
                raise UnsupportedModel(str(err)) from None
            self.used_names.add(name)
            self.value_shapes[name] = shape
            self.chains[v.name] = FloatChain(None, [], shape[0] if shape else 1, shape, [])
            return graph_input
        if quant_read:
            i, quant = reader
            reg = self.register_of(i, quant, self.where(i, quant))
            if not reg.fmt.bounded or reg.rounding != Rounding.HALF_EVEN:
                raise UnsupportedModel(f"{self.where(i, quant)}: the input's Quant must round half to "
                                       "even (ROUND) with a bit width: the engine quantizes float inputs so")
            if fmt is not None and fmt != reg.fmt:
                raise UnsupportedModel(f"the input format {fmt.describe()} given disagrees with the "
                                       f"model's input Quant ({reg.fmt.describe()}); leave it out")
            fmt = reg.fmt
        elif fmt is None:
            raise UnsupportedModel(f"input {v.name} is not read by a Quant alone, so the model does not "
                                   "say its grid; give the input format (--input-format s16.8)")
        else:  # the model computes on float input: the hardware's input register is declared
            self.input_declared = True
        graph_input = self.input = GraphInput(name, shape, fmt)
        try:
            graph_input.check_size()
        except ValueError as err:
            raise UnsupportedModel(str(err)) from None
        self.used_names.add(name)
        self.value_shapes[name], self.value_fracs[name] = shape, fmt.frac_bits
        self.tensors[v.name] = Tensor(name, shape, fmt.frac_bits)
        if quant is not None:
            self.absorbed.add(i)
            self.tensors[quant.output[0]] = self.tensors[v.name]
            if reg.overflow == Overflow.SAT_SYM:  # narrow: inputs are quantized saturating, then clamped
                self.requantize(quant, self.tensors[v.name], reg, self.where(i, quant))
        return graph_input

    def emit_mac(self, i, node, where, op, x_name, w: QConst, b, params_type=Conv2dParams,
                 out_channels=None, **geometry):
        """A MAC layer of weights ``w`` and bias ``b`` (a QConst, a float array, or None), its
        params a ``params_type`` of ``geometry``, ``out_channels`` outputs (None: the weights'
        axis 0). With float scales on its input or weights, or a float bias, its accumulator
        starts a float chain (scale and bias exact in it) that the next Quant ends."""
        t, reg, rounding = self.layer_input(x_name, where, True, scaled=True)
        channels = out_channels or w.ints.shape[0]
        values = None if b is None else np.asarray(b.ints if isinstance(b, QConst) else b).reshape(-1)
        if values is not None and values.size != channels:
            raise UnsupportedModel(f"{where}: bias of {values.size} values for {channels} outputs")
        floating = t.scale is not None or w.scale is not None or \
            (b is not None and (not isinstance(b, QConst) or b.scale is not None))
        if floating and t.scale is not None and len(t.scale) > 1:
            if out_channels is not None:
                raise UnsupportedModel(f"{where}: its input has per-channel float scales; quantize "
                                       "it per tensor before this layer")
            t, w = self._on_common_grid(t, w, geometry.get("groups", 1), where)
        bias = b if isinstance(b, QConst) and not floating else None
        params = params_type(w.fmt, bias.fmt if bias is not None else None, input_register=reg,
                              accumulator=Accumulator(), rounding=rounding, **geometry)
        arrays = {"weight": w.ints}
        if bias is not None:
            arrays["bias"] = values
        name = self.unique(i, node)
        mac = Node(name, op, [t.value], params, arrays, f"onnx {node.op_type} {node.name}")
        if not floating:
            return self.emit(mac, node.output[0], where)
        # its accumulator is no ONNX tensor (the float output adds scale and bias): compare
        # checks the thresholds after it
        self.append(mac, where)
        s_in = t.scale[0] if t.scale else Fraction(1)
        acc = Tensor(name, mac.out_shape, mac.out_fmt.frac_bits,
                     tuple(s_in * s for s in (w.scale or (Fraction(1),))))
        offset = (Fraction(0),)
        if isinstance(b, QConst):
            offset = tuple(Fraction(int(v)) * u for v, u in zip(values, per_channel(b.unit(), channels)))
        elif b is not None:
            offset = tuple(Fraction(float(v)) for v in values)
        self.chains[node.output[0]] = FloatChain(acc, [Affine(acc.unit(), offset)], channels,
                                                 mac.out_shape, [node.name or node.op_type])
        return mac

    def _on_common_grid(self, t: Tensor, w: QConst, groups: int, where) -> tuple:
        """A MAC's input of per-channel float scales s_c summed exactly: each s_c is an integer
        k_c times the channels' common grid g (binary fractions: the finest 2**-e of them), so
        the sum over c of x_c s_c w_oc is g times the sum of x_c (k_c w_oc): the weights of
        input channel c times k_c, the input's scale g (docs/arithmetic.md section 12)."""
        units = t.scale
        if any(u.denominator & (u.denominator - 1) for u in units):
            raise UnsupportedModel(f"{where}: an input scale that is no binary fraction")
        grid = min(Fraction(1, u.denominator) for u in units)
        factors = np.array([int(u / grid) for u in units], dtype=object)
        per_group = w.ints.shape[1]  # input channels each output reads
        if per_group * groups != len(factors):
            raise UnsupportedModel(f"{where}: {len(factors)} input scales for weights of "
                                   f"{per_group} x {groups} input channels")
        widened = w.fmt.bits + max(int(f) for f in factors).bit_length()
        if widened > MAX_BITS:
            raise UnsupportedModel(f"{where}: the input's per-channel scales are too far apart to "
                                   f"sum exactly within {MAX_BITS} bits of weight")
        outputs = w.ints.shape[0]
        k = np.array([[int(factors[(o // (outputs // groups)) * per_group + c]) for c in range(per_group)]
                      for o in range(outputs)], np.int64).reshape((outputs, per_group) + (1,) * (w.ints.ndim - 2))
        weights = QConst(w.ints * k, Format(widened, w.fmt.frac_bits, w.fmt.signed), w.scale)
        return dataclasses.replace(t, scale=(grid,)), weights

    def bias(self, name, where):
        """A layer's bias: a quantized constant, or a float one (a float chain's offset)."""
        if not name:
            return None
        if name in self.qconsts:
            return self.qconsts[name]
        return self.const(name, where, "bias").astype(np.float64)

    def producer(self, name, where) -> Node | None:
        """Our node that computes onnx tensor ``name`` as its raw output, read by nothing else."""
        t = self.tensors.get(name)
        if t is None or self.sole_reader(name) is None:
            return None
        node = next((n for n in reversed(self.nodes) if n.name == t.value), None)
        return node if node is not None and self.onnx_tensor.get(node.name) == name else None

    def declared_batch(self):
        v = next(v for v in self.graph.input if v.name not in self.consts)
        d = v.type.tensor_type.shape.dim[0]
        return d.dim_value if d.HasField("dim_value") else None

