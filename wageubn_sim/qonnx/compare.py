"""The engine against qonnx's execution of a QONNX model, layer by layer: the first divergence
and its cause. qonnx executes in float32 (onnxruntime for the standard ops), so it is exact
only while every value, accumulators included, stays below 2**24."""
from __future__ import annotations

import numpy as np

from ..engine.registers import ACC_EVENT
from ..fixedpoint.scalar import TIE
from ..graph.comparison import (FLOAT32_MANTISSA, CompareReport, TailComparison, accumulator_cause,
                               layer_report)
from ..execution.run import along_channels
from ..graph.ir import Graph


MAX_REFERENCE_NODES = 5000  # qonnx's shape inference and execution take time quadratic in nodes
ALIAS_OPS = ("Identity", "Dropout")


def without_aliases(model):
    """A copy of ``model`` without Identity and (inference) Dropout nodes, their readers reading
    the aliased tensor instead: they compute nothing, and qonnx's execution takes time quadratic
    in the node count. A node whose output is a graph output stays."""
    import onnx
    outputs = {o.name for o in model.graph.output}
    alias, kept = {}, []
    for node in model.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString()) if alias else node
        for k, name in enumerate(node.input):
            node.input[k] = alias.get(name, name)
        if (node.domain in ("", "ai.onnx") and node.op_type in ALIAS_OPS and node.input
                and node.output[0] not in outputs and not any(node.output[1:])):
            alias[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if not alias:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    return copy


def qonnx_values(model, x: np.ndarray) -> dict:
    """Every tensor qonnx computes for the float inputs ``x`` (float64, any batch): run in
    chunks of the batch size the model declares (the last padded with zeros). ``model`` is a
    ModelProto (its external data read in: `reader.read_qonnx`)."""
    model = without_aliases(model)
    if len(model.graph.node) > MAX_REFERENCE_NODES:
        raise ValueError(f"the model has {len(model.graph.node)} nodes (Identity and Dropout left "
                         f"out); qonnx's execution takes time quadratic in them, so compare runs it "
                         f"on at most {MAX_REFERENCE_NODES}")
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        raise ValueError("comparing with qonnx needs qonnx: pip install qonnx==1.0.0 "
                         "(or the test extra)") from None
    try:
        wrapper = ModelWrapper(model).transform(InferShapes())
        name = next(i.name for i in wrapper.graph.input
                    if i.name not in {t.name for t in wrapper.graph.initializer})
        batch = wrapper.get_tensor_shape(name)[0]
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"its input declares batch {batch!r}")
        chunks = []
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            padded = np.zeros((batch, *x.shape[1:]), np.float32)
            padded[:len(part)] = part
            ctx = execute_onnx(wrapper, {name: padded}, return_full_exec_context=True)
            chunks.append({k: v[:len(part)] for k, v in ctx.items()
                           if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == batch})
    except Exception as err:  # qonnx and onnxruntime raise many kinds on models they reject
        raise ValueError(f"qonnx cannot execute the model ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def _threshold_cause(node, out, i) -> str:
    """Where the input integer of a thresholds layer lies against its channel's thresholds: the
    exact boundary the reference's float32 chain fell on the other side of."""
    x = out.trace["input"]
    channel = np.unravel_index(i, out.q.shape)[1]
    table, signs = node.arrays["thresholds"], node.arrays["signs"]
    row = 0 if table.shape[0] == 1 else channel
    v = int(signs[row]) * int(x.reshape(-1)[i])
    reached = int(np.count_nonzero(v >= table[row]))
    level = lambda count: node.params.first + node.params.step * count
    near = [f"{'x' if signs[row] > 0 else '-x'} >= {int(t)} reaches level {level(k + 1)}"
            for k, t in enumerate(table[row]) if k in (reached - 1, reached)]
    return (f"float32 rounding in the reference: it computes the float chain ({node.source}) in "
            f"float32; the engine's thresholds are exact: the integer x = {int(x.reshape(-1)[i])} "
            f"is at level {level(reached)} ({'; '.join(near)})")


def _cause(node, out, i, reference_lsb) -> str:
    flags = int(out.flags.reshape(-1)[i]) if out.flags is not None else 0
    if node.op == "thresholds":
        return _threshold_cause(node, out, i)
    if node.op == "rescale":
        return (f"a fixed-point multiplier approximates the float chain ({node.source}; chosen at "
                f"import: {node.params.multiplier_bits}-bit multipliers, not bit-exact)")
    if flags & ACC_EVENT:
        return accumulator_cause(node)
    big = any(abs(int(v.reshape(-1)[i])) >= FLOAT32_MANTISSA for k, v in out.trace.items()
              if v.shape == out.q.shape and v.size)
    if big or reference_lsb != np.round(reference_lsb):
        return ("qonnx computes in float32: a value here reaches 2**24 or more (or qonnx's value is "
                "off the grid), and float32 rounds it; the engine's integers are exact")
    if node.op == "avg_pool2d":
        kh, kw = node.params.kernel
        if (kh * kw) & (kh * kw - 1):
            return (f"qonnx divides by {kh * kw} in float32 before its Quant rounds; the engine "
                    "rounds the exact mean once")
    if flags & TIE:
        return "tie (qonnx's float value moved an exact half)"
    return "unknown"


def compare_qonnx(model, graph: Graph, inputs) -> CompareReport:
    """Run ``graph`` (imported from ``model``, a path or an onnx.ModelProto with its external
    data read in) and qonnx on the same
    quantized inputs; compare every layer that names its ONNX tensor (graph.meta's
    ``qonnx_tensors``, written by `from_qonnx`)."""
    tensors = graph.meta.get("qonnx_tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in tensors.items()):
        raise ValueError("the graph does not name its layers' ONNX tensors; import it with from_qonnx")
    spec = graph.inputs[0]
    x_q = graph.quantize_input(np.asarray(inputs))
    # a float input quantized by its thresholds goes to qonnx as it is (its preprocessing is in
    # the model), and so does one the model computes on in float (its register declared with
    # --input-format: its quantization is then a cause); one on a grid as its quantized values
    grid = x_q.astype(np.float64) * 2.0 ** -spec.fmt.frac_bits
    raw = np.asarray(inputs, np.float64) if np.asarray(inputs).dtype.kind == "f" else grid
    declared = bool(graph.meta.get("input_declared")) and not np.array_equal(raw, grid)
    x_values = raw if spec.levels is not None or declared else grid
    engine = graph.run(x_q, trace=True)
    if not hasattr(model, "graph"):
        from .reader import read_qonnx
        model = read_qonnx(model)  # its external data by this tool's rules
    values = qonnx_values(model, x_values)
    scales = graph.meta.get("qonnx_scales", {})
    reference = {name: _in_units(values[t], scales.get(name)) for name, t in tensors.items() if t in values}
    cause = _cause
    if declared:
        def cause(node, out, i, reference_lsb):
            return (f"the input quantization: the model computes on float input, which the engine "
                    f"quantizes into its declared register {spec.fmt.describe()} (--input-format, half "
                    "to even); qonnx computes on the float values")
    report = layer_report(graph, engine, reference, "float32", "qonnx", cause)
    if engine.tail is not None:
        report.tail = _tail_comparison(engine, values.get(model.graph.output[0].name), report.first)
    return report


def _tail_comparison(engine, reference, first) -> TailComparison:
    """The float tail's float32 values against qonnx's output."""
    ours = engine.values
    names = engine.tail.describe()
    if reference is None or np.shape(reference) != ours.shape:
        return TailComparison(names, ours.size, ours.size, float("inf"),
                              "qonnx gives no output of the tail's shape")
    diff = np.abs(np.asarray(reference, np.float64) - ours)
    bad = int(np.count_nonzero(diff))
    cause = ("computed in float32 in the model's order, from the last integer tensor's exact value: "
             "not the engine's integers" if not bad else
             "follows from the integer layers' divergence above" if first is not None else
             "the reference computes the tail otherwise (its last integer tensor's float32 value "
             "rounds, or its runtime fuses or reorders the float ops); the integer layers agree")
    return TailComparison(names, ours.size, bad, float(diff.max(initial=0.0)), cause)


def _in_units(value: np.ndarray, scale) -> np.ndarray:
    """A reference value of a float-scale layer (its integers times the scale, in float32) in
    the layer's own units: divided by the scale (per channel on axis 1), rounded where it lies
    within float32's error of an integer."""
    if scale is None:
        return value
    ratio = np.asarray(value, np.float64) / along_channels([float.fromhex(v) for v in scale], value.ndim)
    nearest = np.round(ratio)
    return np.where(np.abs(ratio - nearest) <= 1e-5 * np.maximum(1, np.abs(nearest)), nearest, ratio)
