"""The integer graph: nodes holding integer arrays and params, run by the engine, saved as
JSON plus npz (no pickle), loadable and runnable without torch."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import unicodedata
from pathlib import Path

import numpy as np

from ..files.read import UnreadableFile, inside_folder, read_json, read_npz
from ..files.write import write_folder_atomically
from ..fixedpoint.arrays import exact_int64, in_domain, value_range
from ..fixedpoint.floats import quantize, quantize_events
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow
from ..engine.ops.thresholds import count_levels
from ..engine.registers import Events
from ..engine.registry import OPS
from ..execution.run import RunResult, run_graph
from .tail import FloatTail
from .params import check_structure, params_from_json, params_to_json, stochastic_fields

GRAPH_VERSION = 2  # 2: params as plain values; version 1 files (tagged values) are read too
GRAPH_VERSIONS = (1, 2)
GRAPH_JSON = "graph.json"
GRAPH_ARRAYS = "arrays.npz"
MAX_INPUT_VALUES = 1 << 28  # values in one input sample (2 GiB of int64)
INPUT_WARNING_FRACTION = 0.001  # warn when more of the input saturates or underflows


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


@dataclasses.dataclass(frozen=True)
class InputLevels:
    """A float input quantized by thresholds (docs/arithmetic.md section 12): a float-scale input
    Quant, with any float preprocessing before it, evaluated exactly on the float values. Per
    channel (or one row for all), the integer is ``first`` + #{l : sign * x >= T[l]}, each T[l]
    the smallest float64 that reaches the level (+-inf: none, all); levels ``step`` apart (a
    bipolar input's -1, +1: first -1, step 2)."""
    first: int
    signs: tuple  # +1 or -1 per row
    thresholds: tuple  # rows of non-decreasing float64
    step: int = 1

    def __post_init__(self):
        if isinstance(self.first, bool) or not isinstance(self.first, int):
            raise ValueError(f"input levels: first={self.first!r} must be an int")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"input levels: step={self.step!r} must be a positive int")
        rows = [np.asarray(r, np.float64) for r in self.thresholds]
        if not rows or len(self.signs) != len(rows) or any(s not in (1, -1) for s in self.signs) \
                or len({r.shape for r in rows}) != 1 or any(np.isnan(r).any() or np.any(np.diff(r) < 0) for r in rows):
            raise ValueError("input levels: one sign (+1 or -1) per row, rows of one length, "
                             "non-decreasing, no NaN")

    def to_json(self) -> dict:
        d = {"first": self.first, "signs": list(self.signs),
             "thresholds": [[float(t).hex() for t in row] for row in self.thresholds]}
        return d if self.step == 1 else {**d, "step": self.step}  # levels one apart: as before

    @classmethod
    def from_json(cls, d: dict) -> "InputLevels":
        def value(t):
            if not isinstance(t, str):
                raise TypeError(f"input levels: threshold {t!r} is not a string")
            try:
                return float.fromhex(t)
            except ValueError:
                raise ValueError(f"input levels: threshold {t[:40]!r} is not a float64 in hex "
                                 "(float.hex)") from None
        rows = tuple(tuple(value(t) for t in row) for row in d["thresholds"])
        return cls(d["first"], tuple(d["signs"]), rows, d.get("step", 1))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(x)):
            raise ValueError("the input holds NaN or Inf; its thresholds quantize finite values")
        c = x.shape[1]
        if len(self.thresholds) not in (1, c):
            raise ValueError(f"input levels of {len(self.thresholds)} rows for {c} channels")
        return count_levels(x.astype(np.float64), np.array(self.thresholds, np.float64),
                            np.array(self.signs, np.int64), self.first, self.step)


@dataclasses.dataclass
class GraphInput:
    name: str
    shape: tuple  # without the batch dimension
    fmt: Format
    levels: InputLevels | None = None  # float input quantized by thresholds, not by fmt's grid

    def __post_init__(self):
        if self.levels is not None:
            count = len(self.levels.thresholds[0])
            top = self.levels.first + self.levels.step * count
            if not self.fmt.bounded or self.levels.first < self.fmt.min_int or top > self.fmt.max_int:
                raise ValueError(f"input {self.name}: levels {self.levels.first}..{top} leave its "
                                 f"format {self.fmt.describe()}")

    def check_size(self) -> None:
        """Refuse a declared input shape beyond what the engine can hold, before any array of it
        is made (a forged or misread shape would otherwise ask numpy for petabytes)."""
        size = math.prod(self.shape)
        if size > MAX_INPUT_VALUES:
            raise ValueError(f"input {self.name}: shape {list(self.shape)} holds {size} values a "
                             f"sample, more than the engine's {MAX_INPUT_VALUES}; check the model's "
                             "input shape")

    def check_shape(self, x: np.ndarray) -> None:
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"input shape {x.shape} does not fit the graph's (N, "
                             f"{', '.join(map(str, self.shape))})")

    def quantize(self, x) -> np.ndarray:
        """Float input -> integers of the input format (half to even, saturating); integer
        input is taken as integers of the format, and refused outside it."""
        x = np.asarray(x)
        self.check_shape(x)
        fmt = self.fmt
        if x.dtype.kind in "iu":
            lo, hi = value_range(x)
            if (fmt.bounded and (lo < fmt.min_int or hi > fmt.max_int)) or not in_domain(lo, hi):
                raise ValueError(f"integer input from {lo} to {hi} lies outside the input format "
                                 f"{fmt.describe()}; give integers of that format, or floats")
            return x.astype(np.int64)
        if x.dtype.kind != "f" or x.dtype.itemsize > 8:
            raise ValueError(f"input must be a float (at most float64) or integer array, got {x.dtype}")
        if self.levels is not None:
            return self.levels.quantize(x)
        return quantize(x, fmt, "HALF_EVEN", "SAT")

    def quantize_counted(self, x) -> tuple:
        """`quantize` and what its register met: (q, the rounded values before the fit, which
        show the range the data itself needs, and the register's Events). Integer input and
        input quantized by thresholds levels meet no rounding or fit: their values are q."""
        q = self.quantize(x)
        measured = self._before_fit(x)
        return (q, q, Events()) if measured is None else (q, *measured)

    def _before_fit(self, x):
        """(the rounded values before the fit, Events) of float input on the format's grid;
        None for integer input and input quantized by levels."""
        x = np.asarray(x)
        if x.dtype.kind != "f" or self.levels is not None:
            return None
        rounded, counts = quantize_events(x, self.fmt)
        return rounded, Events.of_requantize(counts, Overflow.SAT)

    def saturation_warning(self, x, fraction: float = INPUT_WARNING_FRACTION) -> str | None:
        """`input_warning` for the input x: None when it fits (measured without quantizing it
        a second time: the run quantizes it)."""
        self.check_shape(np.asarray(x))
        measured = self._before_fit(x)
        if measured is None or not measured[0].size:
            return None
        before_fit, events = measured
        return input_warning(self.fmt, before_fit.size, events, int(before_fit.min()),
                             int(before_fit.max()), fraction)


def input_warning(fmt: Format, values: int, events: Events, lo, hi,
                  fraction: float = INPUT_WARNING_FRACTION) -> str | None:
    """The warning for an input register that saturates or underflows on more than
    ``fraction`` of its ``values`` (None when it does not), naming the counts and the range
    seen (``lo``, ``hi``: integers on the format's grid, before the fit) against the format's."""
    problems = [f"{what} on {count} of {values} values ({100 * count / values:.3g} %)"
                for what, count in (("saturates", events.saturations), ("underflows to zero", events.underflows))
                if values and count > fraction * values]
    if not problems:
        return None
    scale = 2.0 ** -fmt.frac_bits
    return (f"the input {' and '.join(problems)} in its format {fmt.describe()} "
            f"({fmt.min_int * scale:g} .. {fmt.max_int * scale:g}, steps of {scale:g}); the data "
            f"ranges over {lo * scale:g} .. {hi * scale:g}, and the results are for the clipped "
            "input. Scale the data into the format (its normalization, --mean/--std) or give the "
            "graph another input format; the warning's threshold is --input-warning FRACTION")


class Graph:
    def __init__(self, inputs, nodes, outputs, meta=None):
        """Checks the structure before anything runs: unique names, known ops with their params
        struct and input count, every value read after it is computed, each node's arrays
        (exactly those its op needs, integers inside their formats and the domain), no
        STOCHASTIC rounding (the forward engine has no random words), and the outputs."""
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.meta = dict(meta or {})
        names = [i.name for i in self.inputs] + [n.name for n in self.nodes]
        for name in names:
            check_name(name)
        if len(set(names)) != len(names):
            raise ValueError("graph names must be unique")
        if len(self.inputs) != 1:
            raise ValueError(f"the engine runs graphs of one input, this one has {len(self.inputs)}")
        self.inputs[0].check_size()
        known = {i.name for i in self.inputs}
        for node in self.nodes:
            _check_node(node, known)
            known.add(node.name)
        if not self.outputs or any(o not in known for o in self.outputs):
            raise ValueError(f"graph outputs {self.outputs} must name computed values")
        if self.outputs != [self.nodes[-1].name]:
            raise ValueError(f"graph outputs {self.outputs}: the engine's graphs have one output, "
                             f"their last node ({self.nodes[-1].name})")

    # ---- running ------------------------------------------------------------------------
    def quantize_input(self, x) -> np.ndarray:
        return self.inputs[0].quantize(x)

    def run(self, x, trace: bool = False, timings: dict | None = None, plan: bool | None = None,
            threads: int | None = None) -> RunResult:
        """Run the engine (`execution.run_graph`: ``trace`` keeps every node's Output with its
        stages, ``timings`` receives each node's seconds, ``plan`` chooses the compiled plan
        (None: where it takes the graph; True: required; False: layer by layer), ``threads``
        bounds the plan's threads). The plan and the layer-by-layer path give the same
        integers and events. The result carries the output's float scales and the import's
        inexact notes (`meta`), where the graph has them."""
        result = run_graph(self, x, trace, timings, plan, threads)
        scales = self.meta.get("qonnx_scales", {}).get(self.outputs[0])
        if scales:
            result.scale = tuple(float.fromhex(v) for v in scales)
        result.inexact = tuple(self.meta.get("inexact", ()))
        if "float_tail" in self.meta:
            result.tail = FloatTail.from_json(self.meta["float_tail"])
        return result

    __call__ = run

    # ---- files --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": "wageubn-sim graph", "version": GRAPH_VERSION, "meta": self.meta,
            "inputs": [{"name": i.name, "shape": list(i.shape), "format": i.fmt.to_dict(),
                        **({"levels": i.levels.to_json()} if i.levels is not None else {})}
                       for i in self.inputs],
            "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "source": n.source,
                       "params": params_to_json(n.params), "arrays": sorted(n.arrays),
                       "out_format": n.out_fmt.to_dict() if n.out_fmt else None,
                       "out_shape": list(n.out_shape) if n.out_shape is not None else None}
                      for n in self.nodes],
            "outputs": self.outputs,
        }

    def files(self) -> dict:
        """The graph folder's files, {name: bytes}: graph.json and arrays.npz."""
        arrays = {f"{n.name}/{k}": v for n in self.nodes for k, v in n.arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        return {GRAPH_ARRAYS: buf.getvalue(), GRAPH_JSON: text.encode()}

    def save(self, path, overwrite: bool = False) -> Path:
        """Write the folder ``path`` (graph.json + arrays.npz) atomically."""
        return write_folder_atomically(path, self.files(), overwrite)

    def check(self) -> "Graph":
        """Run the graph on an empty batch: every kernel checks its shapes (weights against
        their inputs, windows against their planes) and derives its format, which must equal
        the recorded ones; missing records are filled in. Returns the graph."""
        spec = self.inputs[0]
        traced = self.run(np.zeros((0, *spec.shape), np.int64), trace=True)
        for node in self.nodes:
            out = traced.layers[node.name]
            shape = tuple(out.q.shape[1:])
            if node.out_shape is not None and tuple(node.out_shape) != shape:
                raise ValueError(f"node {node.name}: recorded out_shape {list(node.out_shape)}, but "
                                 f"its input and weights give {list(shape)}")
            if node.out_fmt is not None and node.out_fmt != out.fmt:
                raise ValueError(f"node {node.name}: recorded out_format {node.out_fmt.describe()}, "
                                 f"but its params give {out.fmt.describe()}")
            node.out_shape, node.out_fmt = shape, out.fmt
        return self

    @classmethod
    def load(cls, path) -> "Graph":
        """Read a graph folder, trusting nothing in it: bounded readers, only the arrays
        graph.json names, every field present and of its type, every node checked (`check`)."""
        path = Path(path)
        if not path.is_dir() or not (path / GRAPH_JSON).exists():
            raise FileNotFoundError(f"{path} is not a graph folder (needs {GRAPH_JSON} and "
                                    f"{GRAPH_ARRAYS}); write one with `wageubn-sim compile`")
        hint = "write the graph again with `compile` and `save`"
        try:
            data = read_json(inside_folder(path, GRAPH_JSON, "graph file"), "graph file")
            if not isinstance(data, dict) or data.get("format") != "wageubn-sim graph" \
                    or data.get("version") not in GRAPH_VERSIONS:
                raise ValueError(f"{GRAPH_JSON} is not a wageubn-sim graph of a version this tool "
                                 f"reads ({', '.join(map(str, GRAPH_VERSIONS))})")
            for d in data["nodes"]:
                check_name(d["name"])
                if not isinstance(d["arrays"], list) or not all(isinstance(k, str) for k in d["arrays"]):
                    raise TypeError(f"node {d['name']}: arrays must be a list of role names")
            wanted = [f"{d['name']}/{k}" for d in data["nodes"] for k in d["arrays"]]
            arrays = read_npz(inside_folder(path, GRAPH_ARRAYS, "graph arrays"), "graph arrays", wanted)
            graph = cls._from_json(data, arrays)
        except UnreadableFile as err:
            raise ValueError(f"{err}; {hint}") from None
        except KeyError as err:
            raise ValueError(f"{path / GRAPH_JSON}: {err} is missing (a graph file edited by "
                             f"hand?); {hint}") from None
        except (TypeError, AttributeError) as err:
            raise ValueError(f"{path / GRAPH_JSON}: a field has the wrong type ({err}); {hint}") from None
        except (ValueError, OverflowError) as err:
            raise ValueError(f"{path}: {err}") from None
        try:  # outside the parse's handlers: a TypeError in a kernel is a bug, not a bad field
            return graph.check()
        except (ValueError, OverflowError) as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def _from_json(cls, data: dict, arrays: dict) -> "Graph":
        nodes = []
        for d in data["nodes"]:
            node_arrays = {k: arrays[f"{d['name']}/{k}"] for k in d["arrays"]}
            shape = d["out_shape"]
            nodes.append(Node(d["name"], d["op"], list(d["inputs"]),
                              params_from_json(d["op"], d["params"], data["version"]), node_arrays,
                              d["source"],
                              Format.from_dict(d["out_format"]) if d["out_format"] is not None else None,
                              _shape(shape, f"node {d['name']}: out_shape") if shape is not None else None))
        inputs = [GraphInput(i["name"], _shape(i["shape"], f"input {i['name']}: shape"),
                             Format.from_dict(i["format"]),
                             InputLevels.from_json(i["levels"]) if "levels" in i else None)
                  for i in data["inputs"]]
        return cls(inputs, nodes, data["outputs"], _checked_meta(data["meta"]))


def _checked_meta(meta) -> dict:
    """A graph file's meta, with the fields the engine reads checked: ``qonnx_scales`` {value:
    [positive finite float64 in hex]}, ``inexact`` [text], ``float_tail`` (`tail.FloatTail`)."""
    if not isinstance(meta, dict):
        raise TypeError("meta must be an object")
    scales = meta.get("qonnx_scales", {})
    if not isinstance(scales, dict) or not all(isinstance(v, list) and v for v in scales.values()):
        raise TypeError("meta.qonnx_scales must map value names to lists of float64 in hex")
    for name, values in scales.items():
        for v in values:
            try:
                scale = float.fromhex(v) if isinstance(v, str) else None
            except ValueError:
                scale = None
            if scale is None or not (0 < scale < math.inf):
                raise ValueError(f"meta.qonnx_scales: {name}: {str(v)[:40]!r} is no positive float64 in hex")
    inexact = meta.get("inexact", [])
    if not isinstance(inexact, list) or not all(isinstance(v, str) for v in inexact):
        raise TypeError("meta.inexact must be a list of texts")
    if "float_tail" in meta:
        FloatTail.from_json(meta["float_tail"])  # its error names the field
    return meta


def unique_name(base: str, used: set) -> str:
    """``base``, or ``base-2``, ``base-3``, ...: the first not in ``used``, which it joins (a
    second call of a layer, or two ONNX nodes of one name)."""
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def _shape(value, what) -> tuple:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                          for v in value):
        raise ValueError(f"{what} {value!r} must be a list of positive ints")
    return tuple(value)


def check_name(name) -> None:
    """A layer or input name: text without control characters (a NUL would cut an npz member's
    name short, a newline would break a .coe or .mif header comment)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a layer name must be non-empty text, got {name!r}")
    bad = next((ch for ch in name if unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"layer name {name!r} holds the control character {bad!r}; rename the "
                         "layer (module or ONNX node) without control characters")


def _check_node(node: Node, known: set) -> None:
    """One node's structure (see `Graph.__init__`)."""
    where = f"node {node.name} ({node.op})"
    try:
        check_structure(node.op, node.params, len(node.inputs))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    missing = [i for i in node.inputs if i not in known]
    if missing:
        raise ValueError(f"node {node.name} reads {missing} before they are computed")
    stochastic = stochastic_fields(node.params)
    if stochastic:
        raise ValueError(f"{where}: {stochastic[0]} is STOCHASTIC, but the forward engine draws no "
                         "random words; choose a deterministic rounding for inference")
    spec = OPS[node.op]
    formats = spec.arrays(node.params)
    if set(node.arrays) != set(formats):
        raise ValueError(f"{where} holds arrays {sorted(node.arrays)}; its params need "
                         f"{sorted(formats)}")
    for role, fmt in formats.items():
        array = exact_int64(node.arrays[role], f"{where}: array {role}")
        rank = spec.array_ranks[role]
        if array.ndim != rank:
            raise ValueError(f"{where}: array {role} has shape {array.shape}, rank {rank} expected")
        lo, hi = value_range(array)
        if (fmt.bounded and (lo < fmt.min_int or hi > fmt.max_int)) or not in_domain(lo, hi):
            raise ValueError(f"{where}: array {role} holds {lo}..{hi}, outside its format "
                             f"{fmt.describe()}")
        array.flags.writeable = False  # constants: kernels may cache what they derive
        node.arrays[role] = array


def load_graph(path) -> Graph:
    return Graph.load(path)
