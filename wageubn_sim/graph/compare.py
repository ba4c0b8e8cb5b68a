"""Engine against the torch path, layer by layer, in LSBs of each layer's output format."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx as fx

from ..engine.registers import ACC_EVENT
from ..fixedpoint.scalar import OVERFLOWED, TIE
from .comparison import FLOAT32_MANTISSA, CompareReport, accumulator_cause, layer_report
from .importer import DEFAULT_INPUT_FORMAT, _Tracer, compile_model, layer_names
from .ir import Graph


class _Recorder(fx.Interpreter):
    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach()
        return out


def _torch_outputs(model, x, dtype):
    """Every torch-path layer's output, by the layer's name in the graph."""
    model = copy.deepcopy(model).to(dtype).eval()
    gm = fx.GraphModule(model, _Tracer().trace(model))
    rec = _Recorder(gm)
    rec.values = {}
    with torch.no_grad():
        rec.run(torch.from_numpy(x).to(dtype))
    names = layer_names(gm.graph)
    return {names[k]: v.double().cpu().numpy() for k, v in rec.values.items() if k in names}


def _cause(node, layer_out, flat_index, torch_lsb, dtype) -> str:
    if node.op == "conv2d_bn":
        return ("BatchNorm folded into the conv: a different datapath from the torch path's "
                "(docs/arithmetic.md section 9)")
    flags = int(layer_out.flags.reshape(-1)[flat_index]) if layer_out.flags is not None else 0
    if flags & ACC_EVENT:
        return accumulator_cause(node)
    if dtype == torch.float32:
        stages = layer_out.trace
        big = any(abs(int(v.reshape(-1)[flat_index])) >= FLOAT32_MANTISSA
                  for k, v in stages.items() if k in ("sum", "accumulator", "affine") and v.size)
        if big or torch_lsb != np.round(torch_lsb):
            return "float32 rounding (a sum beyond 24 bits, or a value off the grid)"
        if flags & TIE:
            return "tie (the float path rounded an exact half the other way)"
    if flags & TIE:
        return "tie"
    if flags & OVERFLOWED:
        return "saturation"
    return "unknown"


def compare(model, inputs, graph: Graph | None = None, dtype=torch.float64,
            input_format=DEFAULT_INPUT_FORMAT, accumulators=None) -> CompareReport:
    """Run the torch path (in ``dtype``) and the engine on the same quantized inputs and
    compare every layer's output in LSBs of the engine's format for it."""
    if graph is None:
        graph = compile_model(model, inputs, input_format, accumulators)
    x_q = graph.quantize_input(np.asarray(inputs))
    x_values = x_q.astype(np.float64) * 2.0 ** -graph.inputs[0].fmt.frac_bits
    engine = graph.run(x_q, trace=True)
    torch_values = _torch_outputs(model, x_values, dtype)
    return layer_report(graph, engine, torch_values, str(dtype).replace("torch.", ""), "torch path",
                        lambda node, out, i, lsb: _cause(node, out, i, lsb, dtype))
