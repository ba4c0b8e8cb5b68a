"""The layer-by-layer report of the engine against a reference: the torch path (`compare`) or
qonnx's execution of a QONNX model (`qonnx.compare`), in LSBs of each layer's format."""
from __future__ import annotations

import dataclasses

import numpy as np

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
    reference_lsb: float  # the reference's value in LSBs of the layer's format (may be fractional)
    engine_int: int
    cause: str


@dataclasses.dataclass
class TailComparison:
    """A float tail's float32 values (`graph.tail`) against the reference's output."""
    ops: str
    elements: int
    mismatches: int
    max_abs: float
    cause: str  # why they differ, or how they are computed where they agree


@dataclasses.dataclass
class CompareReport:
    dtype: str
    layers: list
    first: Divergence | None
    reference: str = "torch path"  # what the engine is compared against
    tail: TailComparison | None = None

    @property
    def exact(self) -> bool:
        return self.first is None and (self.tail is None or self.tail.mismatches == 0)

    def to_dict(self) -> dict:
        return {"reference": self.reference, "dtype": self.dtype, "exact": self.exact,
                "layers": [dict(dataclasses.asdict(l), exact=l.exact) for l in self.layers],
                "first_divergence": dataclasses.asdict(self.first) if self.first else None,
                **({"float_tail": dataclasses.asdict(self.tail)} if self.tail else {})}

    def __str__(self) -> str:
        rows = [f"engine vs {self.reference} ({self.dtype}): "
                + ("bit-exact" if self.exact else "DIVERGES"),
                f"{'layer':<28}{'op':<12}{'format':<12}{'elements':>10}{'mismatch':>10}{'max |d| LSB':>13}"]
        for l in self.layers:
            rows.append(f"{l.name:<28}{l.op:<12}{l.fmt:<12}{l.elements:>10}{l.mismatches:>10}"
                        f"{l.max_abs_lsb:>13.4g}")
        if self.first:
            f = self.first
            rows.append(f"first divergence: {f.layer} at {f.index}: {self.reference} {f.reference_lsb!r} LSB, "
                        f"engine {f.engine_int}; cause: {f.cause}")
        if self.tail:
            t = self.tail
            rows.append(f"float tail {t.ops}: {t.elements - t.mismatches} of {t.elements} equal "
                        f"(max |d| {t.max_abs:.4g}); {t.cause}")
        return "\n".join(rows)


def accumulator_cause(node) -> str:
    """The cause of a divergence where the engine's narrow accumulator overflowed."""
    wraps = node.params.accumulator.overflow.name == "WRAP"
    return f"accumulator {'wrap' if wraps else 'saturation'} in the engine"


def layer_report(graph, engine, reference: dict, dtype: str, against: str, cause) -> CompareReport:
    """Compare each traced engine layer (``engine``, a traced RunResult) with ``reference``
    {layer name: float array} in LSBs of the layer's format; ``cause(node, out, flat index,
    reference LSB)`` explains the first divergence."""
    layers, first = [], None
    for node in graph.nodes:
        out = engine.layers[node.name]
        if node.name not in reference:
            continue
        lsb = np.asarray(reference[node.name], np.float64) * 2.0 ** out.fmt.frac_bits
        if lsb.shape != out.q.shape:
            raise ValueError(f"layer {node.name}: the {against} gives shape {lsb.shape}, the engine "
                             f"{out.q.shape}")
        diff = lsb - out.q
        bad = diff != 0
        count = int(np.count_nonzero(bad))
        layers.append(LayerComparison(node.name, node.op, node.source, out.fmt.describe(), out.q.size,
                                      count, float(np.abs(diff).max(initial=0.0))))
        if count and first is None:
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            value = float(lsb.reshape(-1)[i])
            first = Divergence(node.name, tuple(int(v) for v in np.unravel_index(i, out.q.shape)),
                               value, int(out.q.reshape(-1)[i]), cause(node, out, i, value))
    return CompareReport(dtype, layers, first, against)
