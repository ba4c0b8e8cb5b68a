"""The width audit: how wide each layer's registers must be, measured and bounded.

Per layer and tensor (the output; under ``iostrict`` the input register; the accumulator of
MAC layers, a folded BatchNorm's product register, a BatchNorm's xhat register):

* ``declared``: the format the graph gives it (``sinf`` when unbounded);
* ``observed_min`` / ``observed_max`` over the inputs, and ``needed_bits``, the two's complement
  width that holds them (the unsigned width for an unsigned format, e.g. a QONNX uint8);
* ``static_bits``: the worst case from declared widths alone, ``b_x + b_w + ceil(log2 K)``
  (+1 with a bias) for MAC layers — for an unbounded input the observed input width stands in;
* ``bound_bits``: the bound from the actual weights, ``|b| + sum_k |w_k| * max|x|`` (A2Q-style),
  with max|x| observed: guaranteed for any input within the observed input range;
* ``headroom_bits`` = declared - needed (bounded formats only);
* event counts (wraps, saturations, ties, underflows) of that register alone (the accumulator's
  wraps and saturations, the output's rounding ties and saturations, ...);
* ``proposed``: a format with the same fractional bits (and signedness), ``bound_bits`` wide for
  MAC layers, ``needed_bits + 1`` (one guard bit) otherwise.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math

import numpy as np

from ..fixedpoint.format import Format
from ..graph.ir import Graph
from ..graph.ops import MAC_OPS
from ..graph.ranges import bits_needed
from ..vectors.bundle import needed_bits


@dataclasses.dataclass
class TensorAudit:
    layer: str
    op: str
    tensor: str
    declared: str
    frac_bits: int
    observed_min: int
    observed_max: int
    needed_bits: int
    static_bits: int | None
    bound_bits: int | None
    headroom_bits: int | None
    wraps: int
    saturations: int
    ties: int
    underflows: int
    proposed: str


@dataclasses.dataclass
class AuditReport:
    rows: list
    histograms: dict  # (layer, tensor) -> (counts, edges, ((lo, hi), label))

    def to_dict(self):
        return {"columns": [f.name for f in dataclasses.fields(TensorAudit)],
                "rows": [dataclasses.asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        fields = [f.name for f in dataclasses.fields(TensorAudit)]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(r).items()})
        return buf.getvalue()

    def _cells(self):
        head = ["layer", "tensor", "declared", "min", "max", "needed", "static", "bound",
                "headroom", "wraps", "sats", "ties", "underflows", "proposed"]
        body = [[r.layer, r.tensor, r.declared, r.observed_min, r.observed_max, r.needed_bits,
                 _dash(r.static_bits), _dash(r.bound_bits), _dash(r.headroom_bits), r.wraps,
                 r.saturations, r.ties, r.underflows, r.proposed] for r in self.rows]
        return head, [[str(c) for c in row] for row in body]

    def to_table(self) -> str:
        head, body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                  for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) if c.lstrip("-").isdigit() else c.ljust(w)
                            for c, w in zip(row, widths)) for row in body]
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        head, body = self._cells()
        lines = ["# Width audit", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained page: the table, and per tensor a histogram of the observed values
        against the declared format's range (matplotlib, embedded as PNG)."""
        head, body = self._cells()
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in body)
        figures = "".join(f"<h3>{html.escape(layer)} / {html.escape(tensor)}</h3>"
                          f'<img alt="histogram" src="data:image/png;base64,{png}">'
                          for (layer, tensor), png in self._histogram_pngs())
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>wageubn-sim width audit</title>"
                "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
                "td,th{border:1px solid #999;padding:2px 6px;text-align:right}</style></head><body>"
                "<h1>Width audit</h1><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
                + rows + "</table><h2>Observed values against each format's range (in LSBs)</h2>"
                + figures + "</body></html>\n")

    def _histogram_pngs(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        for key, (counts, edges, rng) in self.histograms.items():
            fig, ax = plt.subplots(figsize=(6, 2.2), dpi=80)
            ax.stairs(counts, edges, fill=True)
            if rng is not None:
                (lo, hi), label = rng
                for v in (lo, hi):
                    ax.axvline(v, color="red", linestyle="--", linewidth=1)
                ax.set_title(label, fontsize=8)
            ax.set_xlabel("value (LSB)")
            ax.set_ylabel("count")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
            plt.close(fig)
            yield key, base64.b64encode(buf.getvalue()).decode()


def _dash(v):
    return "-" if v is None else v


def _bits_for(magnitude: int) -> int:
    return max(2, int(magnitude).bit_length() + 1)


def _mac_bounds(node, out, source):
    """(static bits, weight-bound bits, accumulator format) of a MAC layer."""
    p = node.params
    q_in, fmt_in = source
    x_reg = out.trace.get("input", q_in)
    fx = p.input_register.frac_bits if p.input_register is not None else fmt_in.frac_bits
    reg_fmt = p.input_register or fmt_in
    w = node.arrays["weight"]
    k = int(np.prod(w.shape[1:]))
    fw = p.weight_fmt.frac_bits
    has_bias = "bias" in node.arrays
    fb = p.bias_fmt.frac_bits if has_bias else None
    base = max(fx, fw) if node.op == "adder2d" else fx + fw
    frac = base if fb is None else max(base, fb)  # the accumulator's grid (docs §9)
    b_x = reg_fmt.bits if reg_fmt.bounded else needed_bits(x_reg)
    b_w = p.weight_fmt.bits or needed_bits(w)
    static = b_x + b_w + math.ceil(math.log2(max(k, 1))) + int(has_bias) + (frac - base)
    x_max = int(np.abs(x_reg).max(initial=0))
    if node.op == "adder2d":
        term = k * ((x_max << (frac - fx)) + (int(np.abs(w).max(initial=0)) << (frac - fw)))
    else:
        term = int(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max(initial=0)) * x_max << (frac - base)
    if has_bias:
        term += int(np.abs(node.arrays["bias"]).max(initial=0)) << (frac - fb)
    return static, _bits_for(term), Format(p.accumulator.bits, frac)


def audit(graph: Graph, x, bins: int = 40) -> AuditReport:
    """Run ``graph`` on ``x`` (one batch, traced) and audit every layer."""
    result = graph.run(x, trace=True)
    values = {graph.inputs[0].name: (graph.quantize_input(x), graph.inputs[0].fmt)}
    rows, hists = [], {}
    for node in graph.nodes:
        out = result.layers[node.name]
        tensors = [("output", out.q, out.fmt)]
        static = bound = None
        if node.op in MAC_OPS:
            static, bound, acc_fmt = _mac_bounds(node, out, values[node.inputs[0]])
            acc_row = ("accumulator", out.trace["accumulator"], acc_fmt)
            tensors = [acc_row] if node.params.out_fmt is None else [acc_row] + tensors
            if node.op == "conv2d_bn":  # the folded BatchNorm's product register, acc * m + o
                scaled_fmt = Format(None, acc_fmt.frac_bits + node.params.multiplier_frac)
                tensors.insert(1, ("scaled", out.trace["scaled"], scaled_fmt))
        if node.op == "batchnorm2d":  # the normalised value's register
            tensors.insert(0, ("xhat", out.trace["xhat"], node.params.xhat_fmt))
        register = getattr(node.params, "input_register", None)
        if register is not None:  # iostrict: the input held in a register first
            tensors.insert(0, ("input", out.trace["input"], register))
        for name, q, fmt in tensors:
            lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
            unsigned = not fmt.signed and lo >= 0  # an unsigned register: widths in unsigned bits
            needed = bits_needed(lo, hi, signed=not unsigned) if q.size else needed_bits(q)
            ev = out.events_at(name)
            proposed_bits = min(62 - unsigned, max(needed, bound) if name == "accumulator" else needed + 1)
            rows.append(TensorAudit(
                node.name, node.op, name, fmt.describe(), fmt.frac_bits, lo, hi, needed,
                static if name == "accumulator" else None, bound if name == "accumulator" else None,
                (fmt.bits - needed) if fmt.bounded else None, ev.wraps, ev.saturations, ev.ties,
                ev.underflows, Format(proposed_bits, fmt.frac_bits, not unsigned).describe()))
            counts, edges = np.histogram(q, bins=bins) if q.size else (np.zeros(1), np.array([0, 1]))
            shown = fmt if fmt.bounded else Format(proposed_bits, fmt.frac_bits, not unsigned)
            label = (f"declared {fmt.describe()}" if fmt.bounded
                     else f"unbounded; proposed {shown.describe()}") + " range in red"
            hists[(node.name, name)] = (counts, edges, ((shown.min_int, shown.max_int), label))
        values[node.name] = (out.q, out.fmt)
    return AuditReport(rows, hists)
