"""Reading a QONNX model, trusting nothing: bounded in size, checked before anything is built
(ir_version, opsets, the ONNX checker's rules), external data read by this tool's rules (a file
in the model's folder after links are resolved, exactly the bytes a tensor needs), and every
attribute and constant read with its type checked."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np

from ..files.read import UnreadableFile, inside_folder, read_file_range, read_regular_file
from ..fixedpoint.format import MAX_FRAC_BITS, MIN_FRAC_BITS
from .protocol import MARKER, MIN_ONNX_OPSET, QONNX_DOMAINS, QONNX_OPSETS


MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit for one message


class UnsupportedModel(ValueError):
    """The QONNX model holds something the integer engine cannot run exactly."""


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
        inline_external_data(tensor, folder, f"tensor {tensor.name}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedModel(f"the model is not valid ONNX: {first[:300]}; fix or export it again") from None


def inline_external_data(tensor, folder: Path | None, where: str) -> None:
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


def tensor_array(tensor, where: str) -> np.ndarray:
    """An initializer or Constant's value as an ndarray (its external data read in already)."""
    from onnx import numpy_helper
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as err:  # onnx raises several kinds on a malformed tensor
        raise UnsupportedModel(f"{where}: malformed tensor data ({type(err).__name__}: {err})") from None
    if array.dtype.kind not in "iufb":
        raise UnsupportedModel(f"{where}: a constant of type {array.dtype} (numbers only)")
    return array


def attributes(node, where: str) -> dict:
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


def int_attr(attrs, name, default, where, allowed=None):
    value = attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or (allowed is not None and value not in allowed):
        raise UnsupportedModel(f"{where}: attribute {name}={value!r}"
                               + (f"; supported: {sorted(allowed)}" if allowed is not None else ""))
    return value


def ints_attr(attrs, name, default, where, length=None):
    value = attrs.get(name, default)
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                     for v in value) or (length and len(value) != length):
        raise UnsupportedModel(f"{where}: attribute {name}={value!r} must be {length or 'some'} ints")
    return tuple(value)


def str_attr(attrs, name, default, where):
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


def marks(node) -> frozenset:
    text = node.doc_string or ""
    if not text.startswith(MARKER):
        return frozenset()
    return frozenset(w.strip() for w in text[len(MARKER):].split(",") if w.strip())


def module_path(node) -> str | None:
    """The torch module a node came from, where torch.onnx recorded it (its name scopes and
    class hierarchy): the outermost Brevitas layer, else the innermost torch.nn module, e.g.
    layer1.0.conv1, as the torch importer names layers."""
    pairs = _scopes(node)
    quant_layers = [s for s, c in pairs if c.startswith("brevitas.nn.")]  # the outermost one
    layers = [s for s, c in pairs if c.startswith("torch.nn.modules.")]  # the innermost one
    return quant_layers[0] if quant_layers else layers[-1] if layers else None


def quantizer_path(node) -> str | None:
    """For messages: the innermost Brevitas module or quantizer proxy a node came from
    (``a1.act_quant``, ``conv1.weight_quant``; the layer, ``conv1``, for its Conv), else its
    module path."""
    brevitas = [s for s, c in _scopes(node) if c.startswith("brevitas.") and not c.startswith("brevitas.export.")]
    return brevitas[-1] if brevitas else module_path(node)


def _scopes(node) -> list:
    """[(scope, class)] that torch.onnx recorded for the node (bounded; [] if none)."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        if max(len(props.get(k, "")) for k in ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")) > 10_000:
            return []
        scopes = ast.literal_eval(props["pkg.torch.onnx.name_scopes"])
        classes = ast.literal_eval(props["pkg.torch.onnx.class_hierarchy"])
    except (KeyError, ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    if not isinstance(scopes, list) or not isinstance(classes, list):
        return []
    return [(s, c) for s, c in zip(scopes, classes) if isinstance(s, str) and s and isinstance(c, str)]


def padding(pads, where) -> tuple:
    if not pads:
        return (0, 0)
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
        raise UnsupportedModel(f"{where}: pads {list(pads)}; the engine pads the same on both sides "
                               "of each axis ([top, left, bottom, right] with top == bottom, left == right)")
    return (pads[0], pads[1])
