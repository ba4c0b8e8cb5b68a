"""From a QONNX model (Brevitas, FINN, hls4ml, or `qonnx_export`) to an integer graph.

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

The model is read with bounded readers: its size, external data files (a plain name in the
model's folder, the bytes its tensor needs), every attribute's type, every constant finite.
"""
from __future__ import annotations

import ast
import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..engine.activation import ActivationParams
from ..engine.add import AddParams
from ..engine.concat import ConcatParams
from ..engine.conv2d import Conv2dParams
from ..engine.conv2d_bn import Conv2dBatchNormParams
from ..engine.pool import PoolParams
from ..engine.registers import Accumulator
from ..engine.requantize import RequantizeParams
from ..engine.upsample import UpsampleParams
from ..files.read import UnreadableFile, inside_folder, parse_json, read_file_range, read_regular_file
from ..fixedpoint.core import quantize
from ..fixedpoint.format import MAX_BITS, MAX_FRAC_BITS, MAX_UNSIGNED_BITS, MIN_FRAC_BITS, Format
from ..fixedpoint.modes import Overflow, Rounding
from .fold import folded_registers
from .ir import Graph, GraphInput, Node, unique_name
from .ops import OPS, FlattenParams

MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit for one message
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
QONNX_OPSETS = (1, 2)  # the versions of QONNX's ops (Trunc's second in 2)
MIN_ONNX_OPSET = 7  # older opsets describe ops (Upsample, BatchNormalization) otherwise
ONNX_DOMAINS = ("", "ai.onnx")
# QONNX rounding_mode -> ours; CEIL, UP and HALF_DOWN have no engine mode (refused)
ROUNDING_FROM_QONNX = {"ROUND": Rounding.HALF_EVEN, "HALF_EVEN": Rounding.HALF_EVEN,
                       "HALF_UP": Rounding.HALF_AWAY, "FLOOR": Rounding.FLOOR,
                       "DOWN": Rounding.TOWARD_ZERO}
MARKER = "wageubn-sim:"  # an exporter's note in a node's doc_string (`qonnx_export`)
UNBOUNDED = "unbounded"  # the register is unbounded; its bit width only holds its static range
INPUT_REGISTER = "input-register"  # the Quant is the next layer's input register
OWN_NODE = "requantize"  # the Quant is a requantize node of its own
BN_MULTIPLIER_BITS = 16
SUPPORTED = ("Quant/IntQuant, Trunc (v2), BipolarQuant (of constants), Conv (2-D), Gemm, "
             "MatMul (+ Add of a bias), Relu, MaxPool, AveragePool, GlobalAveragePool, "
             "ReduceMean (over H and W), Add, "
             "Clip(0, n) (ReLU6), Concat (channels), Flatten, Reshape (to N,-1), BatchNormalization (after a Conv), "
             "Mul (+ Add) by per-channel constants after a Conv (a folded BatchNorm), "
             "Resize/Upsample (nearest, integer factors), Identity, Dropout, Constant")
_REGISTER_OPS = ("Quant", "IntQuant", "Trunc")
_QONNX_HANDLERS = {"Quant": "_quant", "IntQuant": "_quant", "Trunc": "_quant", "BipolarQuant": "_bipolar"}
_ONNX_HANDLERS = {"Conv": "_conv", "Gemm": "_gemm", "MatMul": "_matmul", "Relu": "_relu", "Clip": "_relu",
                  "MaxPool": "_max_pool", "AveragePool": "_avg_pool", "GlobalAveragePool": "_avg_pool",
                  "ReduceMean": "_avg_pool", "Add": "_add", "Mul": "_mul", "Concat": "_concat",
                  "Flatten": "_flatten", "Reshape": "_reshape", "BatchNormalization": "_batchnorm",
                  "Resize": "_resize", "Upsample": "_resize", "Identity": "_alias", "Dropout": "_alias",
                  "Constant": "_constant"}
_INPUT_COUNTS = {"Quant": (4, 4), "IntQuant": (4, 4), "Trunc": (6, 6), "BipolarQuant": (2, 2),
                 "Conv": (2, 3), "Gemm": (2, 3), "MatMul": (2, 2), "Add": (2, 2), "Mul": (2, 2),
                 "Clip": (1, 3), "Concat": (1, 1 << 16), "Reshape": (2, 2), "Dropout": (1, 3),
                 "BatchNormalization": (5, 5), "Resize": (1, 4), "Upsample": (1, 2),
                 "ReduceMean": (1, 2), "Constant": (0, 0)}  # (fewest, most); others take one


class UnsupportedModel(ValueError):
    """The QONNX model holds something the integer engine cannot run exactly."""


@dataclasses.dataclass
class _Tensor:
    """A tensor the graph computes: our value's name, its shape (no batch) and grid."""
    value: str
    shape: tuple
    frac: int


@dataclasses.dataclass
class _QConst:
    """A quantized constant: integers on one grid 2**-frac (per-channel grids aligned)."""
    ints: np.ndarray
    fmt: Format


@dataclasses.dataclass
class _Register:
    fmt: Format
    rounding: Rounding
    overflow: Overflow
    from_frac: int | None  # Trunc: its input grid (the value is rounded onto it first)
    marks: frozenset


def from_qonnx(model, input_format: Format | None = None, accumulators=None) -> Graph:
    """The integer graph of a QONNX model (a path to an .onnx file, or an onnx.ModelProto).

    ``input_format``: the input's format where the model has no Quant on its input (a model
    that has one takes its format from it). ``accumulators``: as for `compile_model`, keyed by
    layer name (the ONNX node's name); default: exact, or what an inexact export recorded.
    """
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = read_qonnx(model)
    else:
        check_model(model, None)
    return _Importer(model, input_format, accumulators).run()


def read_qonnx(path):
    """The ONNX model at ``path`` as a ModelProto, checked (`check_model`) and with its external
    data read into it by this tool's rules: a file in the model's folder, even after symbolic
    links are resolved, and exactly the bytes each tensor needs."""
    import onnx
    path = Path(path)
    data = read_regular_file(path, "ONNX model", MAX_MODEL_BYTES)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError and others: a damaged file
        raise UnreadableFile(f"ONNX model {path} is not a readable ONNX file ({type(err).__name__}); "
                             "export it again (brevitas.export.export_qonnx, or "
                             "`wageubn-sim export`)") from None
    check_model(model, path.parent)
    return model


def check_model(model, folder: Path | None) -> None:
    """Refuse what is no valid ONNX before anything is built from it: an ``ir_version`` or an
    opset this tool does not know (each named), external data that is not a file in ``folder``
    (read into the model here), then the ONNX checker's rules (unique names, one writer per
    tensor, every node of its opset's schema, unique metadata keys)."""
    import onnx
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise UnsupportedModel(f"ir_version {model.ir_version}: this tool reads ONNX ir_version 3.."
                               f"{onnx.IR_VERSION}; export the model with a released ONNX version")
    opsets = {}
    for entry in model.opset_import:
        domain = entry.domain or "ai.onnx"
        if domain in opsets:
            raise UnsupportedModel(f"opset_import names domain {domain} twice")
        opsets[domain] = entry.version
    if "ai.onnx" not in opsets:
        raise UnsupportedModel("opset_import has no version of the ONNX domain (ai.onnx); export the "
                               "model again")
    low, high = MIN_ONNX_OPSET, onnx.defs.onnx_opset_version()
    if not low <= opsets["ai.onnx"] <= high:
        raise UnsupportedModel(f"opset_import: ai.onnx version {opsets['ai.onnx']}; this tool reads "
                               f"{low}..{high}")
    for domain in QONNX_DOMAINS:
        if domain in opsets and opsets[domain] not in QONNX_OPSETS:
            raise UnsupportedModel(f"opset_import: {domain} version {opsets[domain]}; QONNX's ops "
                                   f"have versions {', '.join(map(str, QONNX_OPSETS))}")
    constants = [a.t for node in model.graph.node if node.op_type == "Constant"
                 for a in node.attribute if a.name == "value"]
    for tensor in [*model.graph.initializer, *constants]:
        _inline_external_data(tensor, folder, f"tensor {tensor.name}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedModel(f"the model is not valid ONNX: {first[:300]}; fix or export it again") from None


# ---- reading constants and attributes ----------------------------------------------------------

def _inline_external_data(tensor, folder: Path | None, where: str) -> None:
    """Replace a tensor's external data by its bytes, read from a file in the model's folder
    (resolved: a link out of the folder is refused), exactly the bytes the tensor needs."""
    from onnx import TensorProto, helper
    if tensor.data_location != TensorProto.EXTERNAL:
        return
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if folder is None:
        raise UnsupportedModel(f"{where}: its data lies in an external file ({location!r}); "
                               "load the model from its path")
    if not location or Path(location).name != location or location in (".", ".."):
        raise UnsupportedModel(f"{where}: external data location {location!r} is not a file "
                               "name beside the model; keep the data file in the model's folder")
    try:
        np_type = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        size = math.prod(tensor.dims) * np.dtype(np_type).itemsize
        offset, length = int(info.get("offset", 0)), int(info.get("length", size))
    except (ValueError, KeyError, TypeError) as err:
        raise UnsupportedModel(f"{where}: malformed external data fields ({err})") from None
    if length != size or offset < 0 or size > MAX_MODEL_BYTES:
        raise UnsupportedModel(f"{where}: external data of {length} bytes at {offset}, but the "
                               f"tensor {list(tensor.dims)} needs {size}")
    path = inside_folder(folder, location, f"{where}: external data")
    tensor.raw_data = read_file_range(path, f"{where}: external data", offset, size)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def _tensor_array(tensor, where: str) -> np.ndarray:
    """An initializer or Constant's value as an ndarray (its external data read in already)."""
    from onnx import numpy_helper
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as err:  # onnx raises several kinds on a malformed tensor
        raise UnsupportedModel(f"{where}: malformed tensor data ({type(err).__name__}: {err})") from None
    if array.dtype.kind not in "iufb":
        raise UnsupportedModel(f"{where}: a constant of type {array.dtype} (numbers only)")
    return array


def _attributes(node, where: str) -> dict:
    from onnx import AttributeProto, helper
    allowed = (AttributeProto.INT, AttributeProto.INTS, AttributeProto.FLOAT, AttributeProto.FLOATS,
               AttributeProto.STRING, AttributeProto.TENSOR)
    out = {}
    for a in node.attribute:
        if a.type not in allowed:
            raise UnsupportedModel(f"{where}: attribute {a.name} of type "
                                   f"{AttributeProto.AttributeType.Name(a.type)} is not supported")
        out[a.name] = a if a.type == AttributeProto.TENSOR else helper.get_attribute_value(a)
    return out


def _int_attr(attrs, name, default, where, allowed=None):
    value = attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or (allowed is not None and value not in allowed):
        raise UnsupportedModel(f"{where}: attribute {name}={value!r}"
                               + (f"; supported: {sorted(allowed)}" if allowed is not None else ""))
    return value


def _ints_attr(attrs, name, default, where, length=None):
    value = attrs.get(name, default)
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                     for v in value) or (length and len(value) != length):
        raise UnsupportedModel(f"{where}: attribute {name}={value!r} must be {length or 'some'} ints")
    return tuple(value)


def _str_attr(attrs, name, default, where):
    value = attrs.get(name, default)
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise UnsupportedModel(f"{where}: attribute {name} is not text") from None
    if not isinstance(value, str):
        raise UnsupportedModel(f"{where}: attribute {name}={value!r} must be a string")
    return value


def power_of_two_exponent(scale: float, where: str) -> int:
    """f with scale == 2**-f exactly; a scale that is not one is refused, never rounded."""
    if not math.isfinite(scale) or scale <= 0:
        raise UnsupportedModel(f"{where}: scale {scale!r} is not a positive number")
    mantissa, exponent = math.frexp(scale)
    if mantissa != 0.5:
        raise UnsupportedModel(f"{where}: scale {scale!r} is not a power of two; the engine's "
                               "formats have power-of-two scales (use a fixed-point quantizer, e.g. "
                               "Brevitas's *FixedPoint ones)")
    f = 1 - exponent
    if not MIN_FRAC_BITS <= f <= MAX_FRAC_BITS:
        raise UnsupportedModel(f"{where}: scale 2**{-f} is outside 2**{-MAX_FRAC_BITS}..2**{-MIN_FRAC_BITS}")
    return f


def _marks(node) -> frozenset:
    text = node.doc_string or ""
    if not text.startswith(MARKER):
        return frozenset()
    return frozenset(w.strip() for w in text[len(MARKER):].split(",") if w.strip())


def _module_path(node) -> str | None:
    """The torch module a node came from, where torch.onnx recorded it (its name scopes and
    class hierarchy): the outermost Brevitas layer, else the innermost torch.nn module, e.g.
    layer1.0.conv1, as the torch importer names layers."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        if max(len(props.get(k, "")) for k in ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")) > 10_000:
            return None
        scopes = ast.literal_eval(props["pkg.torch.onnx.name_scopes"])
        classes = ast.literal_eval(props["pkg.torch.onnx.class_hierarchy"])
    except (KeyError, ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(scopes, list) or not isinstance(classes, list):
        return None
    pairs = [(s, c) for s, c in zip(scopes, classes) if isinstance(s, str) and s and isinstance(c, str)]
    quant_layers = [s for s, c in pairs if c.startswith("brevitas.nn.")]  # the outermost one
    layers = [s for s, c in pairs if c.startswith("torch.nn.modules.")]  # the innermost one
    return quant_layers[0] if quant_layers else layers[-1] if layers else None


def _padding(pads, where) -> tuple:
    if not pads:
        return (0, 0)
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
        raise UnsupportedModel(f"{where}: pads {list(pads)}; the engine pads the same on both sides "
                               "of each axis ([top, left, bottom, right] with top == bottom, left == right)")
    return (pads[0], pads[1])


class _Importer:
    def __init__(self, model, input_format, accumulators):
        self.model, self.graph = model, model.graph
        self.opsets = {o.domain: o.version for o in model.opset_import}
        self.input_format, self.accumulators = input_format, accumulators
        self.consts: dict = {}  # onnx name -> float ndarray
        self.qconsts: dict = {}  # onnx name -> _QConst
        self.tensors: dict = {}  # onnx name -> _Tensor
        self.pending: dict = {}  # onnx name -> (_Tensor, _Register, node): a next layer's input register
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

    # ---- the walk -------------------------------------------------------------------------
    def run(self) -> Graph:
        if self.graph.sparse_initializer:
            raise UnsupportedModel("the model has sparse initializers; store them dense")
        for t in self.graph.initializer:
            self.consts[t.name] = _tensor_array(t, f"initializer {t.name}")
        graph_input = self._graph_input()
        for i, node in enumerate(self.graph.node):
            if i in self.absorbed:
                continue
            self._node(i, node)
        if len(self.graph.output) != 1:
            raise UnsupportedModel(f"the model has {len(self.graph.output)} outputs; the engine "
                                   "runs graphs of one output")
        out = self.graph.output[0].name
        self._flush_pending(out)
        if out not in self.tensors or self.tensors[out].value == graph_input.name:
            raise UnsupportedModel(f"the model's output {out} is not computed by any supported layer")
        self._apply_accumulators()
        meta = {"source": "qonnx", "qonnx_tensors": self.onnx_tensor}
        graph = Graph([graph_input], self.nodes, [self.tensors[out].value], meta)
        self._check_unbounded(graph)
        return graph.check()

    def _where(self, i, node) -> str:
        return f"node {node.name or '#' + str(i)} ({node.op_type})"

    def _node(self, i, node):
        where = self._where(i, node)
        domain, op = node.domain, node.op_type
        table = _QONNX_HANDLERS if domain in QONNX_DOMAINS else _ONNX_HANDLERS if domain in ONNX_DOMAINS else {}
        handler = getattr(self, table[op]) if op in table else None
        if handler is None:
            raise UnsupportedModel(f"{where} of domain {domain or 'ai.onnx'} is not supported "
                                   f"(QONNX's ops are in {QONNX_DOMAINS[0]}). Supported: {SUPPORTED}")
        low, high = _INPUT_COUNTS.get(op, (1, 1))
        if not low <= len(node.input) <= high or not node.output or not node.output[0] \
                or (low and not node.input[0]):
            raise UnsupportedModel(f"{where}: {len(node.input)} inputs and {len(node.output)} outputs; "
                                   f"{op} takes {low}..{high} inputs and gives an output")
        handler(i, node, where, _attributes(node, where))

    # ---- tensors ----------------------------------------------------------------------------
    def _tensor(self, name, where, role="input") -> _Tensor:
        if name in self.pending:  # a register no layer took: it becomes a node of its own
            self._flush_pending(name)
        if name in self.tensors:
            return self.tensors[name]
        if name in self.consts or name in self.qconsts:
            raise UnsupportedModel(f"{where}: its {role} {name} is a constant; the engine computes "
                                   "this op on the network's values only")
        raise UnsupportedModel(f"{where} reads {name} before it is computed (not a topologically "
                               "sorted model?)")

    def _const(self, name, where, role) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModel(f"{where}: its {role} {name or '(none)'} must be a constant")
        value = self.consts[name]
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise UnsupportedModel(f"{where}: its {role} {name} holds NaN or Inf")
        return value

    def _qconst(self, name, where, role) -> _QConst:
        if name in self.qconsts:
            return self.qconsts[name]
        hint = ("; quantize it (a Quant before the layer)" if name in self.consts else "")
        raise UnsupportedModel(f"{where}: its {role} {name} is not a quantized constant{hint}")

    def _unique(self, i, node) -> str:
        return self._unique_name(_module_path(node) or node.name or f"{node.op_type}_{i}")

    def _unique_name(self, base: str) -> str:
        return unique_name(base, self.used_names)

    def _emit(self, node: Node, onnx_out: str, where: str) -> Node:
        """Append a node, derive its shape and grid, and let it take the register after it."""
        self._infer(node, where)
        self.nodes.append(node)
        self._bind(node, onnx_out)
        return node

    def _infer(self, node: Node, where: str):
        ins = [(np.zeros((0, *self._shape_of(v)), np.int64), self._frac_of(v)) for v in node.inputs]
        try:
            out = OPS[node.op][1](node, ins, False)
        except (ValueError, OverflowError) as err:
            raise UnsupportedModel(f"{where}: {err}") from None
        node.out_shape, node.out_fmt = tuple(out.q.shape[1:]), out.fmt

    def _shape_of(self, value):
        return self.value_shapes[value]

    def _frac_of(self, value):
        return self.value_fracs[value]

    def _bind(self, node: Node, onnx_out: str):
        self.value_shapes[node.name] = node.out_shape
        self.value_fracs[node.name] = node.out_fmt.frac_bits
        self.tensors[onnx_out] = _Tensor(node.name, node.out_shape, node.out_fmt.frac_bits)
        self.onnx_tensor[node.name] = onnx_out
        self._take_output_register(node, onnx_out)

    def _sole_reader(self, name):
        readers = self.readers.get(name, [])
        if len(readers) != 1 or readers[0] < 0:
            return None
        return readers[0], self.graph.node[readers[0]]

    # ---- registers ----------------------------------------------------------------------------
    def _register(self, i, node, where) -> _Register:
        """The register a Quant/IntQuant/Trunc node stands for (its input may be anything)."""
        trunc = node.op_type == "Trunc"
        if trunc and self.opsets.get(node.domain, 1) < 2:
            raise UnsupportedModel(f"{where}: Trunc version 1 (domain {node.domain} opset "
                                   f"{self.opsets.get(node.domain, 1)}) is not supported; export "
                                   "with Trunc version 2")
        signed, overflow, rounding, bits = self._quantizer(node, where)
        scale_in = self._scalar_scale(node.input[1], where)
        frac = self._scalar_scale(node.input[4], where) if trunc else scale_in
        marks = _marks(node)
        fmt = Format(None if UNBOUNDED in marks else bits, frac, signed)
        return _Register(fmt, rounding, overflow, scale_in if trunc else None, marks)

    def _quantizer(self, node, where) -> tuple:
        """(signed, overflow, rounding, bits) of a Quant/IntQuant/Trunc; its zero-point checked."""
        trunc = node.op_type == "Trunc"
        if len(node.input) != (6 if trunc else 4) or len(node.output) != 1:
            raise UnsupportedModel(f"{where}: {len(node.input)} inputs; "
                                   f"{'Trunc takes 6' if trunc else 'Quant takes 4'}")
        attrs = _attributes(node, where)
        for k in ("signed", "narrow") if not trunc else ():
            if k not in attrs:  # qonnx itself requires both
                raise UnsupportedModel(f"{where}: attribute {k} is missing; QONNX requires it")
        signed = bool(_int_attr(attrs, "signed", 1, where, {0, 1}))
        narrow = bool(_int_attr(attrs, "narrow", 0, where, {0, 1}))
        if not signed and narrow:
            raise UnsupportedModel(f"{where}: an unsigned narrow Quant (0..2**b-2) has no engine "
                                   "format; use narrow=0")
        mode = _str_attr(attrs, "rounding_mode", "FLOOR" if trunc else "ROUND", where).upper()
        if mode not in ROUNDING_FROM_QONNX:
            raise UnsupportedModel(f"{where}: rounding_mode {mode} has no engine rounding; "
                                   f"supported: {', '.join(ROUNDING_FROM_QONNX)}")
        zero = self._const(node.input[2], where, "zero-point")
        if zero.size == 0 or np.any(zero != 0):
            raise UnsupportedModel(f"{where}: zero-point {zero.ravel()[:4].tolist()} is not zero; "
                                   "the engine's formats are symmetric (zero-point 0)")
        bits = self._bit_width(node.input[5] if trunc else node.input[3], where, signed)
        return signed, Overflow.SAT_SYM if narrow else Overflow.SAT, ROUNDING_FROM_QONNX[mode], bits

    def _scalar_scale(self, name, where) -> int:
        scale = self._const(name, where, "scale").astype(np.float64)
        if scale.size == 0 or np.any(scale != scale.ravel()[0]):
            raise UnsupportedModel(f"{where}: per-channel scales on a network value; the engine's "
                                   "formats are per tensor (per-channel scales apply to constants)")
        return power_of_two_exponent(float(scale.ravel()[0]), where)

    def _bit_width(self, name, where, signed) -> int:
        width = self._const(name, where, "bit width").astype(np.float64)
        if width.size != 1 or width.ravel()[0] != np.round(width.ravel()[0]):
            raise UnsupportedModel(f"{where}: bit width {width.ravel()[:4].tolist()} is not one integer")
        bits = int(width.ravel()[0])
        low, high = (2, MAX_BITS) if signed else (1, MAX_UNSIGNED_BITS)
        if not low <= bits <= high:
            hint = "; a 1-bit signed Quant is bipolar: use BipolarQuant" if signed and bits == 1 else ""
            raise UnsupportedModel(f"{where}: bit width {bits}; the engine holds {low}..{high} bits "
                                   f"{'signed' if signed else 'unsigned'}{hint}")
        return bits

    def _take_output_register(self, node: Node, onnx_out: str):
        """Fold the Quant/Trunc that alone reads ``onnx_out`` into ``node``'s output register,
        where the node has a free one (repeated: a Quant after the folded one cannot fold)."""
        reader = self._sole_reader(onnx_out)
        if reader is None or not self._free_output(node):
            return
        i, q = reader
        if q.domain not in QONNX_DOMAINS or q.op_type not in _REGISTER_OPS or q.input[0] != onnx_out:
            return
        where = self._where(i, q)
        reg = self._register(i, q, where)
        if reg.marks & {INPUT_REGISTER, OWN_NODE} or (reg.from_frac is not None and node.out_fmt.frac_bits > reg.from_frac):
            return  # Trunc rounds onto its input grid first: a node of its own
        p = node.params
        if getattr(p, "input_register", None) is not None and p.rounding != reg.rounding:
            return  # one rounding per layer: the input register's rules
        slot = "out_overflow" if isinstance(p, Conv2dParams) else "overflow"
        node.params = dataclasses.replace(p, out_fmt=reg.fmt, rounding=reg.rounding, **{slot: reg.overflow})
        self._infer(node, where)
        self.absorbed.add(i)
        self._bind(node, q.output[0])

    @staticmethod
    def _free_output(node: Node) -> bool:
        return node.op in ("conv2d", "linear", "conv2d_bn", "activation", "add", "concat") \
            and node.params.out_fmt is None

    def _input(self, name, where, takes_register: bool):
        """A layer's input: (_Tensor, input register or None, its rounding)."""
        if name in self.pending and takes_register:
            t, reg, _, _ = self.pending.pop(name)
            return t, reg.fmt, reg.rounding
        return self._tensor(name, where), None, Rounding.HALF_EVEN

    def _flush_pending(self, name):
        if name in self.pending:
            t, reg, q, where = self.pending.pop(name)
            self._requantize(q, t, reg, where)

    def _requantize(self, q, t: _Tensor, reg: _Register, where):
        """A register no layer holds: a requantize node (Trunc: after one onto its input grid,
        half to even, where the value is finer: Trunc's round(x / scale))."""
        value = t.value
        base = q.name or q.op_type
        if reg.from_frac is not None and t.frac > reg.from_frac:
            pre = Node(self._unique_name(f"{base}.round"), "requantize", [value],
                       RequantizeParams(Format(None, reg.from_frac)), {},
                       f"onnx Trunc {q.name} (its rounding onto the input scale)")
            self._append(pre, where)
            value = pre.name
        node = Node(self._unique_name(base), "requantize", [value],
                    RequantizeParams(reg.fmt, reg.rounding, reg.overflow), {}, f"onnx {q.op_type} {q.name}")
        self._append(node, where)
        self.tensors[q.output[0]] = _Tensor(node.name, node.out_shape, node.out_fmt.frac_bits)
        self.onnx_tensor[node.name] = q.output[0]

    def _append(self, node: Node, where):
        """Append a node that takes no register after it."""
        self._infer(node, where)
        self.nodes.append(node)
        self.value_shapes[node.name], self.value_fracs[node.name] = node.out_shape, node.out_fmt.frac_bits

    # ---- the input ------------------------------------------------------------------------------
    def _graph_input(self) -> GraphInput:
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
        reader = self._sole_reader(v.name)
        quant = None
        if reader is not None and reader[1].domain in QONNX_DOMAINS and reader[1].op_type in ("Quant", "IntQuant"):
            i, quant = reader
            reg = self._register(i, quant, self._where(i, quant))
            if not reg.fmt.bounded or reg.rounding != Rounding.HALF_EVEN:
                raise UnsupportedModel(f"{self._where(i, quant)}: the input's Quant must round half to "
                                       "even (ROUND) with a bit width: the engine quantizes float inputs so")
            if fmt is not None and fmt != reg.fmt:
                raise UnsupportedModel(f"the input format {fmt.describe()} given disagrees with the "
                                       f"model's input Quant ({reg.fmt.describe()}); leave it out")
            fmt = reg.fmt
        elif fmt is None:
            raise UnsupportedModel(f"input {v.name} is not read by a Quant alone, so the model does not "
                                   "say its grid; give the input format (--input-format s16.8)")
        graph_input = GraphInput(name, shape, fmt)
        try:
            graph_input.check_size()
        except ValueError as err:
            raise UnsupportedModel(str(err)) from None
        self.used_names.add(name)
        self.value_shapes[name], self.value_fracs[name] = shape, fmt.frac_bits
        self.tensors[v.name] = _Tensor(name, shape, fmt.frac_bits)
        if quant is not None:
            self.absorbed.add(i)
            self.tensors[quant.output[0]] = self.tensors[v.name]
            if reg.overflow == Overflow.SAT_SYM:  # narrow: inputs are quantized saturating, then clamped
                self._requantize(quant, self.tensors[v.name], reg, self._where(i, quant))
        return graph_input

    # ---- op handlers -------------------------------------------------------------------------
    def _quant(self, i, node, where, attrs):
        x = node.input[0] if node.input else ""
        if x in self.consts and node.op_type != "Trunc":
            self.qconsts[node.output[0]] = self._quantize_const(node, where)
            return
        reg = self._register(i, node, where)
        t = self._tensor(x, where)
        reader = self._sole_reader(node.output[0])
        if (reader is not None and reg.overflow == Overflow.SAT_SYM and reg.from_frac is None
                and OWN_NODE not in reg.marks
                and reader[1].domain in ONNX_DOMAINS
                and reader[1].op_type in ("Conv", "Gemm", "MatMul", "Relu", "Clip")
                and reader[1].input[0] == node.output[0]):
            self.pending[node.output[0]] = (t, reg, node, where)  # the next layer's input register
            return
        self._requantize(node, t, reg, where)

    def _quantize_const(self, node, where) -> _QConst:
        """A Quant of a constant: its integers, exactly (each element on its scale's grid, rounded
        and clamped as the Quant says), per-channel grids aligned to the finest."""
        signed, overflow, rounding, bits = self._quantizer(node, where)
        x = self._const(node.input[0], where, "input").astype(np.float64)
        scale = self._const(node.input[1], where, "scale").astype(np.float64)
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
        return _QConst(q << (finest - fracs), Format(bits + spread, finest, signed))

    def _bipolar(self, i, node, where, attrs):
        if len(node.input) != 2 or node.input[0] not in self.consts:
            raise UnsupportedModel(f"{where}: BipolarQuant of a network value has no engine op (a "
                                   "sign function); only quantized constants")
        x = self._const(node.input[0], where, "input")
        f = self._scalar_scale(node.input[1], where)
        self.qconsts[node.output[0]] = _QConst(np.where(x >= 0, 1, -1).astype(np.int64), Format(2, f))

    def _constant(self, i, node, where, attrs):
        (key, value), = attrs.items() if len(attrs) == 1 else ((None, None),)
        if key == "value":
            self.consts[node.output[0]] = _tensor_array(value.t, where)
        elif key in ("value_float", "value_floats", "value_int", "value_ints"):
            self.consts[node.output[0]] = np.array(value, np.float32 if "float" in key else np.int64)
        else:
            raise UnsupportedModel(f"{where}: a Constant of {sorted(attrs)}; numbers only (value, "
                                   "value_float(s), value_int(s))")

    def _alias(self, i, node, where, attrs):
        if node.input[0] in self.consts or node.input[0] in self.qconsts:
            table = self.consts if node.input[0] in self.consts else self.qconsts
            table[node.output[0]] = table[node.input[0]]
            return
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            raise UnsupportedModel(f"{where}: its mask output is read; inference has none")
        self._flush_pending(node.input[0])
        self.tensors[node.output[0]] = self._tensor(node.input[0], where)

    def _mac(self, i, node, where, op, x_name, w: _QConst, b: _QConst | None, **geometry):
        t, reg, rounding = self._input(x_name, where, True)
        if b is not None and b.ints.size != w.ints.shape[0]:
            raise UnsupportedModel(f"{where}: bias of {b.ints.size} values for {w.ints.shape[0]} outputs")
        params = Conv2dParams(w.fmt, b.fmt if b is not None else None, input_register=reg,
                              accumulator=Accumulator(), rounding=rounding, **geometry)
        arrays = {"weight": w.ints}
        if b is not None:
            arrays["bias"] = b.ints.reshape(-1)
        name = self._unique(i, node)
        return self._emit(Node(name, op, [t.value], params, arrays, f"onnx {node.op_type} {node.name}"),
                          node.output[0], where)

    def _conv(self, i, node, where, attrs):
        if len(node.input) < 2 or len(node.output) != 1:
            raise UnsupportedModel(f"{where}: Conv needs an input and weights")
        w = self._qconst(node.input[1], where, "weight")
        if w.ints.ndim != 4:
            raise UnsupportedModel(f"{where}: weights of rank {w.ints.ndim}; the engine runs 2-D convolutions")
        b = self._qconst(node.input[2], where, "bias") if len(node.input) > 2 and node.input[2] else None
        auto_pad = _str_attr(attrs, "auto_pad", "NOTSET", where)
        if auto_pad not in ("NOTSET", "VALID"):
            raise UnsupportedModel(f"{where}: auto_pad={auto_pad}; give explicit pads")
        kernel = _ints_attr(attrs, "kernel_shape", w.ints.shape[2:], where, 2)
        if kernel != tuple(w.ints.shape[2:]):
            raise UnsupportedModel(f"{where}: kernel_shape {list(kernel)} differs from the weights' "
                                   f"{list(w.ints.shape[2:])}")
        self._mac(i, node, where, "conv2d", node.input[0], w, b,
                  stride=_ints_attr(attrs, "strides", (1, 1), where, 2),
                  padding=_padding(_ints_attr(attrs, "pads", (), where), where),
                  dilation=_ints_attr(attrs, "dilations", (1, 1), where, 2),
                  groups=_int_attr(attrs, "group", 1, where))

    def _gemm(self, i, node, where, attrs):
        if len(node.input) < 2:
            raise UnsupportedModel(f"{where}: Gemm needs A and B")
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or _int_attr(attrs, "transA", 0, where) != 0:
            raise UnsupportedModel(f"{where}: alpha={attrs.get('alpha', 1.0)}, beta={attrs.get('beta', 1.0)}, "
                                   f"transA={attrs.get('transA', 0)}; the engine's linear layer is "
                                   "alpha=1, beta=1, transA=0")
        w = self._qconst(node.input[1], where, "weight")
        if w.ints.ndim != 2:
            raise UnsupportedModel(f"{where}: B of rank {w.ints.ndim}, 2 expected")
        if _int_attr(attrs, "transB", 0, where, {0, 1}) == 0:
            w = _QConst(np.ascontiguousarray(w.ints.T), w.fmt)
        b = self._qconst(node.input[2], where, "bias") if len(node.input) > 2 and node.input[2] else None
        if b is not None and b.ints.size != w.ints.shape[0]:
            raise UnsupportedModel(f"{where}: C of shape {b.ints.shape} is no per-output bias")
        self._mac(i, node, where, "linear", node.input[0], w, b)

    def _matmul(self, i, node, where, attrs):
        w = self._qconst(node.input[1], where, "weight")
        if w.ints.ndim != 2:
            raise UnsupportedModel(f"{where}: B of rank {w.ints.ndim}, 2 expected")
        w = _QConst(np.ascontiguousarray(w.ints.T), w.fmt)
        self._mac(i, node, where, "linear", node.input[0], w, None)

    def _relu(self, i, node, where, attrs):
        """Relu, and Clip(0, n) for an integer n (ReLU6)."""
        ceiling = None
        if node.op_type == "Clip":
            bounds = [self._const(n, where, role).astype(np.float64).ravel() if n else None
                      for n, role in zip(list(node.input[1:3]) + [""] * 2, ("min", "max"))]
            low = bounds[0] if bounds[0] is not None else np.array([attrs.get("min", -np.inf)], np.float64)
            high = bounds[1] if bounds[1] is not None else np.array([attrs.get("max", np.inf)], np.float64)
            if low.size != 1 or high.size != 1 or low[0] != 0 or not (1 <= high[0] < 2 ** 31) \
                    or high[0] != int(high[0]):
                raise UnsupportedModel(f"{where}: Clip({low.tolist()}, {high.tolist()}); only Clip(0, n) "
                                       "for an integer n >= 1 (ReLU6) is supported")
            ceiling = int(high[0])
        t, reg, rounding = self._input(node.input[0], where, True)
        params = ActivationParams(None, ceiling, reg, rounding)
        self._emit(Node(self._unique(i, node), "activation", [t.value], params, {},
                        f"onnx {node.op_type} {node.name}"), node.output[0], where)

    def _pool_geometry(self, attrs, where, kernel_default=None):
        if _int_attr(attrs, "ceil_mode", 0, where) != 0:
            raise UnsupportedModel(f"{where}: ceil_mode=1 is not supported")
        auto_pad = _str_attr(attrs, "auto_pad", "NOTSET", where)
        if auto_pad not in ("NOTSET", "VALID"):
            raise UnsupportedModel(f"{where}: auto_pad={auto_pad}; give explicit pads")
        kernel = _ints_attr(attrs, "kernel_shape", kernel_default, where, 2)
        return dict(kernel=kernel, stride=_ints_attr(attrs, "strides", (1, 1), where, 2),
                    padding=_padding(_ints_attr(attrs, "pads", (), where), where),
                    dilation=_ints_attr(attrs, "dilations", (1, 1), where, 2))

    def _max_pool(self, i, node, where, attrs):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedModel(f"{where}: its Indices output is not supported")
        t = self._tensor(node.input[0], where)
        params = PoolParams(**self._pool_geometry(attrs, where))
        self._emit(Node(self._unique(i, node), "max_pool2d", [t.value], params, {},
                        f"onnx MaxPool {node.name}"), node.output[0], where)

    def _avg_pool(self, i, node, where, attrs):
        t = self._tensor(node.input[0], where)
        if len(t.shape) != 3:
            raise UnsupportedModel(f"{where}: input of shape {t.shape}; pooling needs C,H,W")
        keep_dims = True
        if node.op_type == "ReduceMean":  # over H and W: a global average pool (torch's adaptive one)
            axes = self._const(node.input[1], where, "axes").reshape(-1).tolist() if len(node.input) > 1 \
                else list(_ints_attr(attrs, "axes", (), where))
            if sorted(a % 4 for a in axes) != [2, 3]:
                raise UnsupportedModel(f"{where}: the mean over axes {axes}; only over H and W (2, 3)")
            keep_dims = bool(_int_attr(attrs, "keepdims", 1, where, {0, 1}))
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            geometry = dict(kernel=t.shape[1:], stride=t.shape[1:])
            include_pad = True
        else:
            geometry = self._pool_geometry(attrs, where)
            include_pad = bool(_int_attr(attrs, "count_include_pad", 0, where, {0, 1}))
        kh, kw = geometry["kernel"]
        reader = self._sole_reader(node.output[0])
        reg = q = None
        if reader is not None and reader[1].domain in QONNX_DOMAINS and \
                reader[1].op_type in ("Quant", "IntQuant") and reader[1].input[0] == node.output[0]:
            j, q = reader  # the mean, rounded once onto the Quant's grid
            reg = self._register(j, q, self._where(j, q))
            if reg.marks & {INPUT_REGISTER, OWN_NODE}:
                reg = q = None
        if reg is None:  # without a Quant after it, its mean must be exact
            padded = geometry.get("padding", (0, 0)) != (0, 0)
            if (kh * kw) & (kh * kw - 1) or (padded and not include_pad):
                raise UnsupportedModel(f"{where}: a window of {kh * kw} cells{' (fewer at the borders)' if padded and not include_pad else ''} "
                                       "and no Quant after it: its mean has no grid; put a Quant after "
                                       "it, or use a window of 2**n cells")
            reg = _Register(Format(None, t.frac + (kh * kw).bit_length() - 1), Rounding.HALF_EVEN,
                            Overflow.SAT_SYM, None, frozenset())
        params = PoolParams(**geometry, out_fmt=reg.fmt, count_include_pad=include_pad,
                            rounding=reg.rounding, overflow=reg.overflow)
        pool = Node(self._unique(i, node), "avg_pool2d", [t.value], params, {},
                    f"onnx {node.op_type} {node.name}")
        if not keep_dims:  # ReduceMean to (N, C): the pool, then a flatten
            if q is not None:
                raise UnsupportedModel(f"{where}: a Quant after a ReduceMean with keepdims=0; keep the dims")
            self._append(pool, where)
            return self._emit(Node(self._unique_name(f"{pool.name}.flatten"), "flatten", [pool.name],
                                   FlattenParams(), {}, f"onnx {node.op_type} {node.name} (keepdims=0)"),
                              node.output[0], where)
        self._infer(pool, where)
        self.nodes.append(pool)
        if q is not None:
            self.absorbed.add(j)
        self._bind(pool, q.output[0] if q is not None else node.output[0])

    def _add(self, i, node, where, attrs):
        a, b = node.input[0], node.input[1]
        const = b if b in self.qconsts else a if a in self.qconsts else None
        if const is not None:
            return self._add_bias(i, node, where, a if const == b else b, self.qconsts[const])
        ta, tb = self._tensor(a, where), self._tensor(b, where)
        self._emit(Node(self._unique(i, node), "add", [ta.value, tb.value], AddParams(), {},
                        f"onnx Add {node.name}"), node.output[0], where)

    def _producer(self, name, where) -> Node | None:
        """Our node that computes onnx tensor ``name`` as its raw output, read by nothing else."""
        t = self.tensors.get(name)
        if t is None or self._sole_reader(name) is None:
            return None
        node = next((n for n in reversed(self.nodes) if n.name == t.value), None)
        return node if node is not None and self.onnx_tensor.get(node.name) == name else None

    def _add_bias(self, i, node, where, x_name, c: _QConst):
        """``x + c`` where x is a MAC layer's raw output: c is its bias (MatMul + Add), or a
        folded BatchNorm's offset (Mul + Add)."""
        producer = self._producer(x_name, where)
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
                mult = _shifted(mult, c.fmt.frac_bits - total, where)
                p = dataclasses.replace(p, multiplier_frac=c.fmt.frac_bits - p.accumulator_frac)
                total = c.fmt.frac_bits
            producer.arrays = dict(producer.arrays, multiplier=mult,
                                   offset=_shifted(values, total - c.fmt.frac_bits, where))
            producer.params = p
        elif "bias" in producer.arrays:
            raise UnsupportedModel(f"{where}: a second bias after {producer.name}")
        else:
            producer.params = dataclasses.replace(producer.params, bias_fmt=c.fmt)
            producer.arrays = dict(producer.arrays, bias=values.copy())
        producer.source += f" + onnx Add {node.name}"
        self._infer(producer, where)
        self._bind(producer, node.output[0])

    def _mul(self, i, node, where, attrs):
        a, b = node.input[0], node.input[1]
        const = b if b in self.qconsts else a if a in self.qconsts else None
        x = a if const == b else b
        producer = self._producer(x, where) if const is not None else None
        if producer is None or producer.op != "conv2d" or producer.params.out_fmt is not None:
            raise UnsupportedModel(f"{where}: Mul is supported only by per-channel constants right "
                                   "after a Conv (a folded BatchNorm)")
        m = self.qconsts[const]
        channels = producer.arrays["weight"].shape[0]
        if m.ints.size != channels or (m.ints.ndim >= 3 and m.ints.shape[-3:] != (channels, 1, 1)):
            raise UnsupportedModel(f"{where}: multipliers of shape {m.ints.shape}, one per channel "
                                   f"({channels}) expected")
        self._fold_into_conv(producer, m.ints.reshape(-1), m.fmt.frac_bits,
                             np.zeros(channels, np.int64), f" * onnx Mul {node.name}", node.output[0], where)

    def _fold_into_conv(self, conv: Node, mult, mult_frac, offset, source, onnx_out, where):
        acc_frac = conv.out_fmt.frac_bits
        fields = {f.name: getattr(conv.params, f.name) for f in dataclasses.fields(Conv2dParams)}
        params = Conv2dBatchNormParams(**fields, accumulator_frac=acc_frac, multiplier_frac=mult_frac)
        conv.op, conv.params = "conv2d_bn", params
        conv.arrays = dict(conv.arrays, multiplier=np.asarray(mult, np.int64),
                           offset=np.asarray(offset, np.int64))
        conv.source += source
        self._infer(conv, where)
        self._bind(conv, onnx_out)

    def _batchnorm(self, i, node, where, attrs):
        if len(node.output) > 1 and any(node.output[1:]) or _int_attr(attrs, "training_mode", 0, where) != 0:
            raise UnsupportedModel(f"{where}: BatchNormalization in training mode; export for inference")
        conv = self._producer(node.input[0], where)
        if conv is None or conv.op != "conv2d" or conv.params.out_fmt is not None:
            raise UnsupportedModel(f"{where}: a BatchNormalization is supported right after a Conv "
                                   "(folded into it); fold it in your framework otherwise")
        names = ("scale", "bias", "mean", "variance")
        gamma, beta, mean, var = (self._const(n, where, r).astype(np.float64).reshape(-1)
                                  for n, r in zip(node.input[1:5], names))
        eps = attrs.get("epsilon", 1e-5)
        channels = conv.arrays["weight"].shape[0]
        if any(v.size != channels for v in (gamma, beta, mean, var)) or not isinstance(eps, float):
            raise UnsupportedModel(f"{where}: its constants must hold one value per channel ({channels})")
        if np.any(var + eps <= 0):
            raise UnsupportedModel(f"{where}: variance + epsilon is not positive")
        ratio = [Fraction(float(g)) / Fraction(float(math.sqrt(float(v) + eps))) for g, v in zip(gamma, var)]
        mult, offset, frac = folded_registers(ratio, [Fraction(float(v)) for v in beta],
                                              [Fraction(float(v)) for v in mean],
                                              conv.out_fmt.frac_bits, BN_MULTIPLIER_BITS)
        self._fold_into_conv(conv, mult, frac, offset,
                             f" + onnx BatchNormalization {node.name} (float, folded with "
                             f"{BN_MULTIPLIER_BITS}-bit multipliers: not bit-exact)", node.output[0], where)

    def _concat(self, i, node, where, attrs):
        ins = [self._tensor(n, where) for n in node.input]
        rank = len(ins[0].shape) + 1
        axis = _int_attr(attrs, "axis", None, where)
        if axis not in (1, 1 - rank):
            raise UnsupportedModel(f"{where}: axis={axis}; the engine joins along channels (axis 1)")
        self._emit(Node(self._unique(i, node), "concat", [t.value for t in ins], ConcatParams(), {},
                        f"onnx Concat {node.name}"), node.output[0], where)

    def _flatten(self, i, node, where, attrs):
        t = self._tensor(node.input[0], where)
        if _int_attr(attrs, "axis", 1, where) != 1:
            raise UnsupportedModel(f"{where}: axis={attrs.get('axis')}; only 1 (to N, -1) is supported")
        self._emit(Node(self._unique(i, node), "flatten", [t.value], FlattenParams(), {},
                        f"onnx Flatten {node.name}"), node.output[0], where)

    def _reshape(self, i, node, where, attrs):
        t = self._tensor(node.input[0], where)
        shape = self._const(node.input[1], where, "shape").reshape(-1).tolist()
        size = math.prod(t.shape)
        batches = (-1, self._declared_batch()) if _int_attr(attrs, "allowzero", 0, where) \
            else (0, -1, self._declared_batch())  # 0 copies the batch unless allowzero
        if len(shape) != 2 or shape[0] not in batches or shape[1] not in (size, -1) \
                or shape[0] == shape[1] == -1:
            raise UnsupportedModel(f"{where}: Reshape to {shape}; only to (N, {size}) is supported")
        self._emit(Node(self._unique(i, node), "flatten", [t.value], FlattenParams(), {},
                        f"onnx Reshape {node.name}"), node.output[0], where)

    def _declared_batch(self):
        v = next(v for v in self.graph.input if v.name not in self.consts)
        d = v.type.tensor_type.shape.dim[0]
        return d.dim_value if d.HasField("dim_value") else None

    def _resize(self, i, node, where, attrs):
        t = self._tensor(node.input[0], where)
        if _str_attr(attrs, "mode", "nearest", where) != "nearest":
            raise UnsupportedModel(f"{where}: mode={attrs.get('mode')}; only nearest is supported")
        if node.op_type == "Resize" and len(node.input) > 2:  # opset 11 on: X, roi, scales, sizes
            transform = _str_attr(attrs, "coordinate_transformation_mode", "half_pixel", where)
            rounding = _str_attr(attrs, "nearest_mode", "round_prefer_floor", where)
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
        if scales_name and self._const(scales_name, where, "scales").size:
            factors = self._const(scales_name, where, "scales").astype(np.float64).tolist()
        elif sizes_name:
            sizes = self._const(sizes_name, where, "sizes").tolist()
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
        self._emit(Node(self._unique(i, node), "upsample", [t.value], params, {},
                        f"onnx {node.op_type} {node.name}"), node.output[0], where)

    # ---- after the walk ------------------------------------------------------------------------
    def _apply_accumulators(self):
        recorded = {}
        for prop in self.model.metadata_props:
            if prop.key == "wageubn_sim.accumulators":
                try:
                    recorded = {k: Accumulator.from_dict(v) for k, v in
                                parse_json(prop.value, "metadata wageubn_sim.accumulators").items()}
                except (ValueError, TypeError, AttributeError) as err:
                    raise UnsupportedModel(f"metadata wageubn_sim.accumulators is malformed ({err})") from None
        wanted = self.accumulators if self.accumulators is not None else recorded
        if isinstance(wanted, Accumulator):
            wanted = {"*": wanted}
        if not isinstance(wanted, dict):
            raise TypeError("accumulators must be an Accumulator or a dict {layer name: Accumulator}")
        macs = [n for n in self.nodes if n.op in ("conv2d", "linear", "conv2d_bn")]
        unknown = sorted(set(wanted) - {n.name for n in macs} - {"*"})
        if unknown:
            raise UnsupportedModel(f"accumulators name layers the model does not have: {unknown}; its "
                                   f"MAC layers are {[n.name for n in macs][:8]}")
        for n in macs:
            acc = wanted.get(n.name, wanted.get("*"))
            if acc is not None:  # its output format may change: `check` derives it again
                n.params, n.out_fmt = dataclasses.replace(n.params, accumulator=acc), None

    def _check_unbounded(self, graph: Graph):
        """A register marked unbounded must never need its bit width (else the marker would
        change a number qonnx clamps)."""
        from .ranges import bits_needed, value_ranges
        marked = [n for n in graph.nodes if getattr(n.params, "out_fmt", None) is not None
                  and not n.params.out_fmt.bounded]
        if not marked or not graph.inputs[0].fmt.bounded:
            return
        ranges = value_ranges(graph)
        for q in self.graph.node:
            if UNBOUNDED not in _marks(q) or q.output[0] not in self.tensors:
                continue
            value = self.tensors[q.output[0]].value
            if value not in ranges:
                continue
            bits = int(self._const(q.input[5 if q.op_type == "Trunc" else 3], "", "bit width").ravel()[0])
            signed = bool(_int_attr(_attributes(q, ""), "signed", 1, ""))
            narrow = bool(_int_attr(_attributes(q, ""), "narrow", 0, ""))
            if bits_needed(*ranges[value], signed, narrow) > bits:
                raise UnsupportedModel(f"node {q.name}: marked unbounded, but its value may need more "
                                       f"than its {bits} bits; remove the marker")


def _shifted(values, shift: int, where) -> np.ndarray:
    values = np.asarray(values, np.int64)
    if shift and values.size and int(np.abs(values).max()) >= 1 << max(0, MAX_BITS - 1 - shift):
        raise UnsupportedModel(f"{where}: aligning the constants leaves the 62-bit domain")
    return values << shift
