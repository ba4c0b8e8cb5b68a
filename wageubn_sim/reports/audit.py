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
* ``headroom_bits`` = declared - needed; for an unbounded register, against the narrowest width
  known to hold every input (``headroom_against``: ``bound``, else ``static``, the static range
  analysis of an output);
* the graph input's own row (op ``input``): the float data's quantization, its range before
  the fit (`graph.ir.GraphInput.quantize_counted`), its saturations, ties and underflows;
* event counts (wraps, saturations, ties, underflows) of that register alone (the accumulator's
  wraps and saturations, the output's rounding ties and saturations, ...);
* ``proposed``: a format with the same fractional bits (and signedness), ``bound_bits`` wide for
  MAC layers, ``needed_bits + 1`` (one guard bit) otherwise;
* for a thresholds layer, its comparator table (``thresholds[L]``: L thresholds per channel, as
  wide as their values after clamping to the input's static range) and for a rescale its
  multipliers, the constants that size their memories;
* a histogram on fixed integer bin edges that follow from the tensor's format alone
  (`histogram_edges`), never from the data.

Everything is a sum, a minimum or a maximum of integers per batch (`AuditStats`), so a dataset
audited in shards, serially or on a Dask cluster, in any order, merges into the same bytes as
one pass over it (`audit(graph, data, client=...)`).
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math

import numpy as np
from numba import njit, prange

from ..fixedpoint.arrays import needed_bits
from ..fixedpoint.format import Format, bits_needed
from ..engine.ops.conv2d import accumulator_grid
from ..engine.registers import Events
from ..engine.registry import OPS
from ..execution.ranges import value_ranges
from ..graph.ir import INPUT_WARNING_FRACTION, Graph, input_warning
from .network import bars_of, png_figure, text_figure
from .pages import image, image_map, page, png_of, pyplot, table


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
    headroom_against: str  # declared, or for an unbounded register: bound or static ("" if neither)
    values: int  # per sample
    wraps: int
    saturations: int
    ties: int
    underflows: int
    proposed_bits: int
    proposed: str


@dataclasses.dataclass
class AuditReport:
    rows: list
    histograms: dict  # (layer, tensor) -> (counts, edges, Format, (lo, hi) shown in red, label)
    samples: int = 0

    def to_dict(self):
        return {"samples": self.samples,
                "columns": [f.name for f in dataclasses.fields(TensorAudit)],
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "histograms": [{"layer": layer, "tensor": tensor, "edges": h[1].tolist(),
                                "counts": h[0].tolist()}
                               for (layer, tensor), h in self.histograms.items()]}

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

    @property
    def input_row(self) -> TensorAudit | None:
        """The graph input's own row (the first), where the statistics have one."""
        return self.rows[0] if self.rows and self.rows[0].op == "input" else None

    def input_warning(self, fraction: float = INPUT_WARNING_FRACTION) -> str | None:
        """`graph.ir.input_warning` for the graph input's row."""
        r = self.input_row
        return None if r is None else row_input_warning(r, self.histograms[(r.layer, r.tensor)][2],
                                                         self.samples, fraction)

    def _cells(self):
        head = ["layer", "tensor", "declared", "min", "max", "needed", "static", "bound",
                "headroom", "wraps", "sats", "ties", "underflows", "proposed"]
        body = [[r.layer, r.tensor, r.declared, r.observed_min, r.observed_max, r.needed_bits,
                 _dash(r.static_bits), _dash(r.bound_bits), _headroom(r), r.wraps,
                 r.saturations, r.ties, r.underflows, r.proposed] for r in self.rows]
        return head, [[str(c) for c in row] for row in body]

    def to_table(self) -> str:
        """The whole network as text bars, then the table."""
        head, body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                  for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) if c.lstrip("-+").isdigit() else c.ljust(w)
                            for c, w in zip(row, widths)) for row in body]
        return text_figure(bars_of(self)) + "\n" + "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        head, body = self._cells()
        warning = self.input_warning()
        lines = ["# Width audit", "", f"{self.samples} samples.", ""]
        if warning:
            lines += [f"**Warning:** {warning}.", ""]
        lines += ["## The whole network", "", "```", text_figure(bars_of(self)).rstrip(), "```", "",
                  "## Registers", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained page: the whole network in one figure (each line linked to its
        histogram), the table (each row linked likewise), then per register a collapsible
        histogram of the observed values against the format's range (matplotlib, PNG)."""
        head, body = self._cells()
        bars = bars_of(self)
        anchors = {b.label: b.anchor for b in bars}
        links = [anchors.get(f"{r.layer} / {r.tensor}") for r in self.rows]
        parts = [f"<h1>Width audit</h1><p>{self.samples} samples; {len(self.rows)} rows.</p>"]
        warning = self.input_warning()
        if warning:
            parts.append(f"<p class='warning'>Warning: {html.escape(warning)}.</p>")
        if bars:
            png, areas = png_figure(bars)
            parts.append("<h2>The whole network</h2>" + image(
                png, "every register in graph order: declared, needed, proposed, static and "
                "weight-bound widths in bits, with each register's events", "network")
                + image_map("network", areas))
        parts.append("<h2>Registers</h2>" + table(head, body, links))
        parts.append("<h2>Observed values against each format's range (in LSBs)</h2>")
        rows = {(r.layer, r.tensor): r for r in self.rows}
        for (layer, tensor), png in self._histogram_pngs():
            r = rows[(layer, tensor)]
            name = f"{layer} / {tensor}"
            parts.append(f"<details id='{anchors[name]}'><summary>{html.escape(name)}: declared "
                         f"{r.declared}, needed {r.needed_bits} bits</summary>"
                         + image(png, f"histogram of {name}") + "</details>")
        return page("wageubn-sim width audit", "".join(parts))

    def _histogram_pngs(self):
        plt = pyplot()
        for key, (counts, edges, _, (lo, hi), label) in self.histograms.items():
            fig, ax = plt.subplots(figsize=(6, 2.2), dpi=80)
            if edges is _LOG_EDGES:  # bins of equal bit length: one bar each, where values fell
                used = np.flatnonzero(counts)
                first, last = (int(used[0]), int(used[-1])) if used.size else (61, 62)
                bins = np.arange(first, last + 1)
                ax.bar(bins, counts[first:last + 1], width=0.9)
                ax.set_xticks(bins, [_bin_label(edges[b]) for b in bins], fontsize=6, rotation=90)
                ax.set_xlabel("value (LSB), bins of equal bit length")
                label = label.replace(" range in red", "")
            else:
                ax.stairs(counts, edges, fill=True)
                for v in (lo, hi):
                    ax.axvline(v, color="red", linestyle="--", linewidth=1)
                ax.set_xlabel("value (LSB)")
            ax.set_title(label, fontsize=8)
            ax.set_ylabel("count")
            fig.tight_layout()
            yield key, png_of(fig)


def row_input_warning(row: TensorAudit, fmt: Format, samples: int, fraction: float) -> str | None:
    """`graph.ir.input_warning` of the graph input's audit row over ``samples`` samples."""
    return input_warning(fmt, row.values * samples, Events(row.wraps, row.saturations, row.ties, row.underflows),
                         row.observed_min, row.observed_max, fraction)


def _headroom(r) -> str:
    """Declared minus needed; for an unbounded register, against the width it is compared with."""
    if r.headroom_bits is None:
        return "-"
    return str(r.headroom_bits) if r.headroom_against == "declared" else f"{r.headroom_bits} ({r.headroom_against})"


def _bin_label(edge: int) -> str:
    """A log bin by its lower edge: 0, 2^k or -2^k."""
    edge = int(edge)
    return "0" if edge == 0 else ("-" if edge < 0 else "") + f"2^{abs(edge).bit_length() - 1}"


def _dash(v):
    return "-" if v is None else v


def _bits_for(magnitude: int) -> int:
    return max(2, int(magnitude).bit_length() + 1)


# ---- histograms on fixed edges ---------------------------------------------------------------
LINEAR_BINS = 64  # a bounded format's range in at most this many equal bins
_LOG_EDGES = np.array([-(1 << k) for k in range(61, -1, -1)] + [0] + [1 << k for k in range(62)],
                      dtype=np.int64)  # -2**61, ..., -2, -1, 0, 1, 2, ..., 2**61


def histogram_edges(fmt: Format) -> np.ndarray:
    """Integer bin edges of a tensor in ``fmt``, from the format alone: a bounded format's
    range [min_int, max_int + 1) in min(2**bits, 64) equal bins; an unbounded one in bins of
    equal bit length, [2**(k-1), 2**k) and mirrored (the domain -2**61 .. 2**61)."""
    if not fmt.bounded:
        return _LOG_EDGES
    bins = min(1 << fmt.bits, LINEAR_BINS)
    width = (1 << fmt.bits) // bins
    return fmt.min_int + width * np.arange(bins + 1, dtype=np.int64)


def histogram(q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of q per bin [edges[i], edges[i+1]) of `histogram_edges` (values beyond the
    edges in the end bins): one pass, each value's bin found by a shift or its bit length."""
    flat = np.ascontiguousarray(q, dtype=np.int64).reshape(-1)
    bins = len(edges) - 1
    if edges is _LOG_EDGES:
        return _log_counts(flat)
    shift = int(edges[1] - edges[0]).bit_length() - 1  # equal bins of 2**shift values
    return _linear_counts(flat, int(edges[0]), shift, bins)


_CHUNK = 1 << 16


@njit(cache=True)
def _bit_length(v):
    """The bit length of 0 <= v < 2**62 (0 for 0)."""
    n = 0
    for step in (32, 16, 8, 4, 2, 1):
        if v >> step:
            v >>= step
            n += step
    return n + (1 if v else 0)


@njit(cache=True, parallel=True)
def _linear_counts(flat, low, shift, bins):
    chunks = (flat.size + _CHUNK - 1) // _CHUNK
    parts = np.zeros((chunks, bins), np.int64)
    for c in prange(chunks):
        for i in range(c * _CHUNK, min(flat.size, (c + 1) * _CHUNK)):
            k = (flat[i] - low) >> shift
            parts[c, min(max(k, 0), bins - 1)] += 1
    return parts.sum(axis=0)


@njit(cache=True, parallel=True)
def _log_counts(flat):
    """Bins of _LOG_EDGES: v >= 0 in bin 62 + bit_length(v); v < 0 in 61 - bit_length(-v - 1)."""
    chunks = (flat.size + _CHUNK - 1) // _CHUNK
    parts = np.zeros((chunks, 124), np.int64)
    for c in prange(chunks):
        for i in range(c * _CHUNK, min(flat.size, (c + 1) * _CHUNK)):
            v = flat[i]
            k = 62 + _bit_length(v) if v >= 0 else 61 - _bit_length(-v - 1)
            parts[c, min(max(k, 0), 123)] += 1
    return parts.sum(axis=0)


# ---- mergeable statistics --------------------------------------------------------------------
_EVENTS = ("wraps", "saturations", "ties", "underflows")


@dataclasses.dataclass
class TensorStats:
    """One register over some samples: exact sums, minima and maxima only."""
    fmt: Format
    count: int = 0
    lo: int | None = None
    hi: int | None = None
    events: tuple = (0, 0, 0, 0)  # wraps, saturations, ties, underflows
    counts: np.ndarray | None = None  # on histogram_edges(fmt)

    def merge(self, other: "TensorStats") -> "TensorStats":
        lows = [v for v in (self.lo, other.lo) if v is not None]
        highs = [v for v in (self.hi, other.hi) if v is not None]
        return TensorStats(self.fmt, self.count + other.count, min(lows, default=None),
                           max(highs, default=None), tuple(a + b for a, b in zip(self.events, other.events)),
                           self.counts + other.counts)


@dataclasses.dataclass
class AuditStats:
    """Every audited register of a graph over some samples, and each MAC layer's observed input
    range (after its input register), which the weight bound needs."""
    samples: int
    tensors: dict  # (layer, tensor) -> TensorStats, in the graph's order
    mac_inputs: dict  # layer -> (lo, hi) of the values its MACs read

    def merge(self, other: "AuditStats") -> "AuditStats":
        if list(self.tensors) != list(other.tensors):
            raise ValueError("audit statistics of different graphs cannot be merged")
        mac = {}
        for k, (lo, hi) in self.mac_inputs.items():
            olo, ohi = other.mac_inputs[k]
            mac[k] = (min(lo, olo), max(hi, ohi)) if lo is not None and olo is not None \
                else (lo, hi) if olo is None else (olo, ohi)
        return AuditStats(self.samples + other.samples,
                          {k: v.merge(other.tensors[k]) for k, v in self.tensors.items()}, mac)


def register_stats(values: np.ndarray, fmt: Format, events) -> TensorStats:
    """The statistics of one register's integers in one batch (``events``: its Events)."""
    lo, hi = (int(values.min()), int(values.max())) if values.size else (None, None)
    return TensorStats(fmt, int(values.size), lo, hi, tuple(getattr(events, k) for k in _EVENTS),
                       histogram(values, histogram_edges(fmt)))


INPUT_REGISTER = "input"  # the tensor name of the graph input's own row


def audit_batch(graph: Graph, x, labels=None) -> AuditStats:
    """The statistics of one batch (traced run); a shard task of `audit`. The graph input's
    quantization is a register too: its range is the data's before the fit, so an input that
    saturates shows the width it would need."""
    spec = graph.inputs[0]
    q, before_fit, input_events = spec.quantize_counted(x)
    result = graph.run(q, trace=True)
    values = {spec.name: q}
    tensors = {(spec.name, INPUT_REGISTER): register_stats(before_fit, spec.fmt, input_events)}
    mac = {}
    for node in graph.nodes:
        out = result.layers[node.name]
        for name, q, fmt in OPS[node.op].traced_registers(node.params, out):
            tensors[(node.name, name)] = register_stats(q, fmt, out.events_at(name))
        if OPS[node.op].accumulator:
            x_reg = out.trace.get("input", values[node.inputs[0]])
            mac[node.name] = (int(x_reg.min()), int(x_reg.max())) if x_reg.size else (None, None)
        values[node.name] = out.q
    return AuditStats(len(x), tensors, mac)


def _mac_bounds(node, x_range, fmt_in: Format):
    """(static bits, weight-bound bits) of a MAC layer whose MACs read values in ``x_range``."""
    p = node.params
    fx = p.input_register.frac_bits if p.input_register is not None else fmt_in.frac_bits
    reg_fmt = p.input_register or fmt_in
    w = node.arrays["weight"]
    k = int(np.prod(w.shape[1:]))
    fw = p.weight_fmt.frac_bits
    has_bias = "bias" in node.arrays
    fb = p.bias_fmt.frac_bits if has_bias else None
    adder = OPS[node.op].mac == "adder"
    base = max(fx, fw) if adder else fx + fw  # the grid of the terms, then the accumulator's
    frac = accumulator_grid(fx, p.weight_fmt, p.bias_fmt if has_bias else None, adder)[0]
    x_lo, x_hi = x_range if x_range[0] is not None else (0, 0)
    b_x = reg_fmt.bits if reg_fmt.bounded else bits_needed(x_lo, x_hi)
    b_w = p.weight_fmt.bits or needed_bits(w)
    static = b_x + b_w + math.ceil(math.log2(max(k, 1))) + int(has_bias) + (frac - base)
    x_max = max(abs(x_lo), abs(x_hi))
    if adder:
        term = k * ((x_max << (frac - fx)) + (int(np.abs(w).max(initial=0)) << (frac - fw)))
    else:
        term = int(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max(initial=0)) * x_max << (frac - base)
    if has_bias:
        term += int(np.abs(node.arrays["bias"]).max(initial=0)) << (frac - fb)
    return static, _bits_for(term)


def audit_report(graph: Graph, stats: AuditStats) -> AuditReport:
    """The audit's rows and histograms from (merged) statistics: the graph input's row first,
    then each layer's registers in datapath order."""
    fmts = {graph.inputs[0].name: graph.inputs[0].fmt}
    fmts.update({n.name: n.out_fmt for n in graph.nodes})
    static_ranges = value_ranges(graph) if graph.inputs[0].fmt.bounded else {}
    rows, hists = [], {}

    def add(layer, op, name, t: TensorStats, static, bound):
        fmt = t.fmt
        lo, hi = (t.lo, t.hi) if t.lo is not None else (0, 0)
        unsigned = not fmt.signed and lo >= 0  # an unsigned register: widths in unsigned bits
        needed = bits_needed(lo, hi, signed=not unsigned)
        proposed_bits = min(62 - unsigned, max(needed, bound) if bound is not None else needed + 1)
        if fmt.bounded:
            headroom, against = fmt.bits - needed, "declared"
        else:  # against the narrowest width known to hold every input: the weight bound or the static one
            width, against = min(((w, k) for w, k in ((bound, "bound"), (static, "static")) if w is not None),
                                 default=(None, ""))
            headroom = None if width is None else width - needed
        rows.append(TensorAudit(layer, op, name, fmt.describe(), fmt.frac_bits, lo, hi, needed, static,
                                bound, headroom, against, t.count // max(stats.samples, 1), *t.events,
                                proposed_bits, Format(proposed_bits, fmt.frac_bits, not unsigned).describe()))
        shown = fmt if fmt.bounded else Format(proposed_bits, fmt.frac_bits, not unsigned)
        label = (f"declared {fmt.describe()}" if fmt.bounded
                 else f"unbounded; proposed {shown.describe()}") + " range in red"
        hists[(layer, name)] = (t.counts, histogram_edges(fmt), fmt, (shown.min_int, shown.max_int), label)

    spec = graph.inputs[0]
    if (spec.name, INPUT_REGISTER) in stats.tensors:
        add(spec.name, "input", INPUT_REGISTER, stats.tensors[(spec.name, INPUT_REGISTER)], None, None)
    for node in graph.nodes:
        static = bound = None
        if OPS[node.op].accumulator:
            static, bound = _mac_bounds(node, stats.mac_inputs[node.name], fmts[node.inputs[0]])
        for (layer, name), t in stats.tensors.items():
            if layer != node.name:
                continue
            if name == "accumulator":
                add(layer, node.op, name, t, static, bound)
            else:
                rng = static_ranges.get(node.name) if name == "output" else None
                add(layer, node.op, name, t,
                    None if rng is None else bits_needed(*rng, signed=t.fmt.signed or rng[0] < 0), None)
        rows += _constant_rows(graph, node)
    return AuditReport(rows, hists, stats.samples)


def _constant_rows(graph: Graph, node) -> list:
    """The comparator table of a thresholds layer (its count per channel in the row's tensor
    name, its width: the thresholds clamped to the input's static range, as the plan and the
    export hold them) and a rescale's multipliers: what sizes their memories."""
    if node.op == "thresholds":
        from ..engine.ops.thresholds import clamped_to_range
        table = node.arrays["thresholds"]
        if graph.inputs[0].fmt.bounded:
            table = clamped_to_range(table, *value_ranges(graph)[node.inputs[0]])
        name, fmt = f"thresholds[{table.shape[1]}]", Format(None, node.params.input_frac)
    elif node.op == "rescale":
        table, name, fmt = node.arrays["multiplier"], "multiplier", Format(node.params.multiplier_bits, 0)
    else:
        return []
    lo, hi = (int(table.min()), int(table.max())) if table.size else (0, 0)
    needed = bits_needed(lo, hi)
    return [TensorAudit(node.name, node.op, name, fmt.describe(), fmt.frac_bits, lo, hi, needed, None,
                        None, (fmt.bits - needed) if fmt.bounded else None,
                        "declared" if fmt.bounded else "", int(table.size), 0, 0, 0, 0,
                        needed, Format(needed, fmt.frac_bits).describe())]


def audit(graph: Graph, data, client=None, batch: int | None = None, shard_size: int | None = None,
          progress=None, labels=None) -> AuditReport:
    """Audit every register of ``graph`` over ``data``: an array (N first), an iterable of
    batches, a path or a `data.DataSource` (`data.open_data`). Streamed in batches; with a
    Dask ``client``, one task per shard. The result does not depend on batch, shard or client."""
    from ..data.shards import DEFAULT_BATCH, DEFAULT_SHARD, map_reduce
    from ..data.sources import open_data
    source = open_data(data, graph.inputs[0].shape, labels=labels)
    stats = map_reduce(audit_batch, graph, source, batch or DEFAULT_BATCH, shard_size or DEFAULT_SHARD,
                       client, progress)
    if stats is None:
        raise ValueError("the data holds no samples")
    return audit_report(graph, stats)
