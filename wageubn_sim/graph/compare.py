"""Engine against the torch path, layer by layer, in LSBs of each layer's output format."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.fx as fx

from ..engine.registers import ACC_EVENT
from ..fixedpoint.core import OVERFLOWED, TIE
from .importer import DEFAULT_INPUT_FORMAT, _Tracer, compile_model, layer_names
from .ir import Graph

FLOAT32_MANTISSA = 1 << 24


@dataclasses.dataclass
class LayerComparison:
    name: str
    op: str
    source: str
    fmt: str
    elements: int
    mismatches: int
    max_abs_lsb: float

    @property
    def exact(self) -> bool:
        return self.mismatches == 0


@dataclasses.dataclass
class Divergence:
    layer: str
    index: tuple
    torch_lsb: float  # the torch value in LSBs of the layer's format (may be fractional)
    engine_int: int
    cause: str


@dataclasses.dataclass
class CompareReport:
    dtype: str
    layers: list
    first: Divergence | None

    @property
    def exact(self) -> bool:
        return self.first is None

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "exact": self.exact,
                "layers": [dict(dataclasses.asdict(l), exact=l.exact) for l in self.layers],
                "first_divergence": dataclasses.asdict(self.first) if self.first else None}

    def __str__(self) -> str:
        rows = [f"engine vs torch path ({self.dtype}): "
                + ("bit-exact" if self.exact else "DIVERGES"),
                f"{'layer':<28}{'op':<12}{'format':<12}{'elements':>10}{'mismatch':>10}{'max |d| LSB':>13}"]
        for l in self.layers:
            rows.append(f"{l.name:<28}{l.op:<12}{l.fmt:<12}{l.elements:>10}{l.mismatches:>10}"
                        f"{l.max_abs_lsb:>13.4g}")
        if self.first:
            f = self.first
            rows.append(f"first divergence: {f.layer} at {f.index}: torch {f.torch_lsb!r} LSB, "
                        f"engine {f.engine_int}; cause: {f.cause}")
        return "\n".join(rows)


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
    return {names[k]: v for k, v in rec.values.items() if k in names}


def _cause(layer_out, flat_index, torch_lsb, dtype, acc_overflow, op) -> str:
    if op == "conv2d_bn":
        return ("BatchNorm folded into the conv: a different datapath from the torch path's "
                "(docs/arithmetic.md section 9)")
    flags = int(layer_out.flags.reshape(-1)[flat_index]) if layer_out.flags is not None else 0
    if flags & ACC_EVENT:
        return f"accumulator {'wrap' if acc_overflow == 'WRAP' else 'saturation'} in the engine"
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
    layers, first = [], None
    for node in graph.nodes:
        out = engine.layers[node.name]
        if node.name not in torch_values:
            continue
        t = torch_values[node.name].double().cpu().numpy()
        lsb = t * 2.0 ** out.fmt.frac_bits
        diff = lsb - out.q
        bad = diff != 0
        count = int(np.count_nonzero(bad))
        layers.append(LayerComparison(node.name, node.op, node.source, out.fmt.describe(), out.q.size,
                                      count, float(np.abs(diff).max(initial=0.0))))
        if count and first is None:
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            acc = getattr(node.params, "accumulator", None)
            first = Divergence(node.name, tuple(int(v) for v in np.unravel_index(i, out.q.shape)),
                               float(lsb.reshape(-1)[i]), int(out.q.reshape(-1)[i]),
                               _cause(out, i, float(lsb.reshape(-1)[i]), dtype,
                                      acc.overflow.name if acc else None, node.op))
    return CompareReport(str(dtype).replace("torch.", ""), layers, first)
