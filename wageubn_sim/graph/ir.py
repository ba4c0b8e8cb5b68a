"""The integer graph: nodes holding integer arrays and params, run by the engine, saved as
JSON plus npz (no pickle), loadable and runnable without torch."""
from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from .._files import write_folder_atomically
from ..fixedpoint.core import quantize
from ..fixedpoint.format import Format
from .ops import OPS, params_from_json, params_to_json

GRAPH_VERSION = 1
GRAPH_JSON = "graph.json"
GRAPH_ARRAYS = "arrays.npz"


@dataclasses.dataclass
class Node:
    name: str
    op: str
    inputs: list
    params: object
    arrays: dict = dataclasses.field(default_factory=dict)
    source: str = ""  # the torch module or function it came from
    out_fmt: Format | None = None  # recorded at compile; data-independent
    out_shape: tuple | None = None  # without the batch dimension


@dataclasses.dataclass
class GraphInput:
    name: str
    shape: tuple  # without the batch dimension
    fmt: Format


@dataclasses.dataclass
class RunResult:
    q: np.ndarray  # the output integers
    fmt: Format
    layers: dict  # node name -> engine Output (with trace stages when traced)

    @property
    def values(self) -> np.ndarray:
        """The output as float64 (exact while |q| < 2**53)."""
        return self.q.astype(np.float64) * 2.0 ** -self.fmt.frac_bits


class Graph:
    def __init__(self, inputs, nodes, outputs, meta=None):
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.meta = dict(meta or {})
        names = [i.name for i in self.inputs] + [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("graph names must be unique")
        known = {i.name for i in self.inputs}
        for node in self.nodes:
            for array in node.arrays.values():
                array.flags.writeable = False  # constants: kernels may cache what they derive
            if node.op not in OPS:
                raise ValueError(f"node {node.name}: unknown op {node.op!r}")
            missing = [i for i in node.inputs if i not in known]
            if missing:
                raise ValueError(f"node {node.name} reads {missing} before they are computed")
            known.add(node.name)

    # ---- running ------------------------------------------------------------------------
    def quantize_input(self, x) -> np.ndarray:
        """Float input -> integers of the input format (half to even, saturating); integer
        input is checked against the format."""
        spec = self.inputs[0]
        x = np.asarray(x)
        if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != tuple(spec.shape):
            raise ValueError(f"input shape {x.shape} does not fit the graph's (N, "
                             f"{', '.join(map(str, spec.shape))})")
        if x.dtype.kind in "iu":
            q = x.astype(np.int64)
            if spec.fmt.bounded and q.size and (q.min() < spec.fmt.min_int or q.max() > spec.fmt.max_int):
                raise ValueError(f"integer input outside the input format {spec.fmt.describe()}")
            return q
        if x.dtype.kind != "f":
            raise TypeError(f"input must be a float or integer array, got {x.dtype}")
        return quantize(x, spec.fmt, "HALF_EVEN", "SAT")

    def run(self, x, trace: bool = False, timings: dict | None = None) -> RunResult:
        """Run the engine. ``trace`` keeps every node's Output with its stages; ``timings``,
        if given, receives each node's seconds. Without trace, each value is freed after
        its last reader."""
        values = {self.inputs[0].name: (self.quantize_input(x), self.inputs[0].fmt.frac_bits)}
        last_use = {name: i for i, node in enumerate(self.nodes) for name in node.inputs}
        layers, out = {}, None
        for i, node in enumerate(self.nodes):
            ins = [values[name] for name in node.inputs]
            start = time.perf_counter()
            try:
                out = OPS[node.op][1](node, ins, trace)
            except (ValueError, OverflowError) as err:
                raise type(err)(f"node {node.name} ({node.op}, from {node.source}): {err}") from err
            if timings is not None:
                timings[node.name] = time.perf_counter() - start
            values[node.name] = (out.q, out.fmt.frac_bits)
            if trace:
                layers[node.name] = out
            else:
                for name in node.inputs:
                    if last_use[name] == i and name not in self.outputs:
                        values.pop(name, None)
            if node.name == self.outputs[0]:
                result = out
        if not self.nodes or self.outputs[0] not in values:
            raise ValueError("the graph computes no output")
        return RunResult(result.q, result.fmt, layers)

    __call__ = run

    # ---- files --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": "wageubn-sim graph", "version": GRAPH_VERSION, "meta": self.meta,
            "inputs": [{"name": i.name, "shape": list(i.shape), "format": i.fmt.to_dict()}
                       for i in self.inputs],
            "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "source": n.source,
                       "params": params_to_json(n.params), "arrays": sorted(n.arrays),
                       "out_format": n.out_fmt.to_dict() if n.out_fmt else None,
                       "out_shape": list(n.out_shape) if n.out_shape is not None else None}
                      for n in self.nodes],
            "outputs": self.outputs,
        }

    def save(self, path, overwrite: bool = False) -> Path:
        """Write the folder ``path`` (graph.json + arrays.npz) atomically."""
        arrays = {f"{n.name}/{k}": v for n in self.nodes for k, v in n.arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        return write_folder_atomically(path, {GRAPH_ARRAYS: buf.getvalue(),
                                              GRAPH_JSON: text.encode()}, overwrite)

    @classmethod
    def load(cls, path) -> "Graph":
        path = Path(path)
        if not (path / GRAPH_JSON).is_file() or not (path / GRAPH_ARRAYS).is_file():
            raise FileNotFoundError(f"{path} is not a graph folder (needs {GRAPH_JSON} and {GRAPH_ARRAYS})")
        try:
            data = json.loads((path / GRAPH_JSON).read_text())
        except ValueError as err:  # JSONDecodeError, or not UTF-8
            raise ValueError(f"{path / GRAPH_JSON} is not valid JSON ({err}); write the graph "
                             "again with `compile` and `save`") from None
        if not isinstance(data, dict) or data.get("format") != "wageubn-sim graph" \
                or data.get("version") != GRAPH_VERSION:
            raise ValueError(f"{path}: not a version-{GRAPH_VERSION} wageubn-sim graph")
        with np.load(path / GRAPH_ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        try:
            return cls._from_json(data, arrays)
        except KeyError as err:
            raise ValueError(f"{path / GRAPH_JSON}: {err} is missing (a graph file edited by "
                             "hand? write it again with `compile` and `save`)") from None
        except (TypeError, AttributeError) as err:
            raise ValueError(f"{path / GRAPH_JSON}: a field has the wrong type ({err}); write "
                             "the graph again with `compile` and `save`") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def _from_json(cls, data: dict, arrays: dict) -> "Graph":
        nodes = []
        for d in data["nodes"]:
            missing = [k for k in d["arrays"] if f"{d['name']}/{k}" not in arrays]
            if missing:
                raise ValueError(f"array {d['name']}/{missing[0]} is missing from {GRAPH_ARRAYS}")
            node_arrays = {k: arrays[f"{d['name']}/{k}"] for k in d["arrays"]}
            nodes.append(Node(d["name"], d["op"], list(d["inputs"]), params_from_json(d["op"], d["params"]),
                              node_arrays, d.get("source", ""),
                              Format.from_dict(d["out_format"]) if d.get("out_format") else None,
                              tuple(d["out_shape"]) if d.get("out_shape") is not None else None))
        inputs = [GraphInput(i["name"], tuple(i["shape"]), Format.from_dict(i["format"]))
                  for i in data["inputs"]]
        return cls(inputs, nodes, data["outputs"], data.get("meta"))


def load_graph(path) -> Graph:
    return Graph.load(path)
