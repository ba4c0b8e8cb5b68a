"""The width sweep: the narrowest accumulator and output registers, layer by layer, and the
narrowest fixed-point multipliers of a rescale layer, that keep a network's outputs within a
criterion on a dataset.

1. The audit (`audit.AuditStats`) gives each register's needed width on the data: at that width
   nothing overflows, so the outputs are bit-identical.
2. Per register, with every other register at the graph's own, a bisection between a minimum
   width and the needed one finds the narrowest width (per overflow mode) that meets the
   criterion; all registers bisect together, one pass over the data per step (assumed: a wider
   register is never worse, which saturation gives; a wrap can be right by chance).
3. The narrowest choices are checked together; while they fail, every proposed register widens
   by one bit (at most `MAX_WIDENINGS` times).

A pass over the data computes, per candidate, exact integer metrics against the graph's own
output: differing output elements, the largest difference in output LSBs, samples whose top-1
class changed, and with labels the samples classified correctly. They are sums and maxima, so
a sweep on shards, serial or on Dask, gives the same bytes (`data.shards.map_reduce`).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from ..fixedpoint.format import Format, bits_needed
from ..fixedpoint.modes import Overflow
from ..engine.registry import OPS
from ..execution.run import run_from
from ..graph.ir import INPUT_WARNING_FRACTION, Graph, Node
from .audit import AuditStats, TensorAudit, audit_batch, audit_report, row_input_warning

MAX_WIDENINGS = 4
REGISTERS = ("accumulator", "output", "multiplier")


@dataclasses.dataclass(frozen=True)
class Criterion:
    """``exact`` (bit-identical outputs), ``lsb:N`` (within N output LSBs), ``top1[:F]`` (the
    same top-1 class on at least a fraction F of the samples, default 1) or ``accuracy[:D]``
    (top-1 accuracy on the labels at most D below the graph's own, default 0)."""
    kind: str
    value: float = 0

    @classmethod
    def parse(cls, text: str) -> "Criterion":
        kind, _, arg = text.partition(":")
        try:
            if kind == "exact" and not arg:
                return cls("exact")
            if kind == "lsb":
                value = int(arg)
                if value >= 0:
                    return cls("lsb", value)
            if kind == "top1":
                value = float(arg) if arg else 1.0
                if 0 <= value <= 1:
                    return cls("top1", value)
            if kind == "accuracy":
                value = float(arg) if arg else 0.0
                if 0 <= value <= 1:
                    return cls("accuracy", value)
        except ValueError:
            pass
        raise ValueError(f"criterion {text!r}: write exact, lsb:N (N >= 0), top1[:FRACTION] or "
                         "accuracy[:DROP] (fractions in 0..1)")

    def __str__(self):
        return self.kind if self.kind == "exact" else f"{self.kind}:{self.value:g}"

    @property
    def score_name(self) -> str:
        return {"top1": "top-1 agreement with the graph", "accuracy": "accuracy on the labels"}.get(
            self.kind, "max |error| (output LSB)")

    def score(self, m: "Metrics") -> float:
        """The candidate in the criterion's terms: accuracy, top-1 agreement, or the largest
        error in output LSBs (for exact and lsb); NaN for a refused candidate."""
        if m.refused or not m.samples:
            return float("nan")
        if self.kind == "top1":
            return (m.samples - m.top1_changes) / m.samples
        if self.kind == "accuracy":
            return m.correct / m.samples
        return float(m.max_lsb)

    def own_score(self, m: "Metrics") -> float:
        """The graph's own score on the samples of ``m``: full agreement, no error, or its
        accuracy on the labels."""
        if self.kind == "top1":
            return 1.0
        if self.kind == "accuracy":
            return m.reference_correct / m.samples if m.samples else 0.0
        return 0.0

    def limit(self, m: "Metrics") -> float:
        """The score a candidate must reach (at least for accuracy and top1, at most for LSBs)."""
        return self.own_score(m) - self.value if self.kind == "accuracy" else float(self.value)

    def holds(self, m: "Metrics") -> bool:
        if m.refused:
            return False
        if self.kind == "exact":
            return m.mismatches == 0
        if self.kind == "lsb":
            return m.max_lsb <= self.value
        if self.kind == "top1":
            return m.samples - m.top1_changes >= self.value * m.samples
        return m.correct >= m.reference_correct - self.value * m.samples


@dataclasses.dataclass
class Metrics:
    """A candidate against the graph's own output over some samples: sums and maxima."""
    samples: int = 0
    mismatches: int = 0  # output elements that differ
    max_lsb: int = 0  # the largest difference, in output LSBs
    top1_changes: int = 0  # samples whose top-1 class differs
    correct: int = 0  # with labels: samples the candidate classifies correctly
    reference_correct: int = 0  # ... and the graph itself
    refused: str = ""  # the candidate cannot run (e.g. a bias its saturating accumulator cannot hold)

    def merge(self, other: "Metrics") -> "Metrics":
        return Metrics(self.samples + other.samples, self.mismatches + other.mismatches,
                       max(self.max_lsb, other.max_lsb), self.top1_changes + other.top1_changes,
                       self.correct + other.correct, self.reference_correct + other.reference_correct,
                       self.refused or other.refused)


@dataclasses.dataclass(frozen=True)
class Candidate:
    layer: str
    register: str  # "accumulator", "output" or "multiplier"
    bits: int
    overflow: str

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.register}/{self.bits}/{self.overflow}"


@dataclasses.dataclass
class PassStats:
    """One pass over the data: per candidate key, its Metrics (merged by key)."""
    metrics: dict

    def merge(self, other: "PassStats") -> "PassStats":
        return PassStats({k: v.merge(other.metrics[k]) for k, v in self.metrics.items()})


def apply(graph: Graph, choices) -> Graph:
    """A copy of ``graph`` with candidates applied (formats derived again by `Graph.check`)."""
    by_layer = {}
    for c in choices:
        by_layer.setdefault(c.layer, []).append(c)
    nodes = [_applied(n, by_layer[n.name]) if n.name in by_layer else n for n in graph.nodes]
    meta = dict(graph.meta, sweep=[dataclasses.asdict(c) for c in choices])
    return Graph(graph.inputs, nodes, graph.outputs, meta).check()


def _applied(node: Node, choices) -> Node:
    params, arrays = node.params, node.arrays
    for c in choices:
        if c.register == "multiplier":
            params, arrays = _narrower_multipliers(params, arrays, c.bits)
        elif c.register == "accumulator":
            params = dataclasses.replace(params, accumulator=dataclasses.replace(
                params.accumulator, bits=c.bits, overflow=Overflow[c.overflow]))
        else:
            spec = OPS[node.op]
            register = spec.output_register(params)
            fmt = register.fmt
            params = spec.with_output_register(params, dataclasses.replace(
                register, fmt=Format(c.bits, fmt.frac_bits, fmt.signed), overflow=Overflow[c.overflow]))
    return dataclasses.replace(node, params=params, arrays=arrays, out_fmt=None, out_shape=None)


def _narrower_multipliers(params, arrays, bits: int):
    """A rescale's multipliers on ``bits`` bits for the same ratios: each M and offset O divided
    by 2**k (rounded half to even, exactly) and its shift lowered by k, k the bits dropped; a
    channel whose shift is below k keeps shift 0 and saturates its multiplier to the width
    (a worse ratio, which the criterion judges)."""
    from ..fixedpoint.reference import round_fraction
    from fractions import Fraction
    dropped = params.multiplier_bits - bits
    limit = (1 << (bits - 1)) - 1
    mults, offsets, shifts = [], [], []
    for m, o, shift in zip(arrays["multiplier"].tolist(), arrays["offset"].tolist(), arrays["shift"].tolist()):
        k = min(dropped, shift)
        m2 = round_fraction(Fraction(m, 1 << k), "HALF_EVEN")
        mults.append(max(-limit, min(limit, m2)))
        offsets.append(round_fraction(Fraction(o, 1 << k), "HALF_EVEN"))
        shifts.append(shift - k)
    narrowed = {"multiplier": np.array(mults, np.int64), "offset": np.array(offsets, np.int64),
                "shift": np.array(shifts, np.int64)}
    return dataclasses.replace(params, multiplier_bits=bits), dict(arrays, **narrowed)


def _compare(out, ref, labels, ref_correct) -> Metrics:
    diff = np.abs(out.astype(np.int64) - ref) if out.shape == ref.shape else None
    m = Metrics(samples=len(ref))
    if diff is None:
        return dataclasses.replace(m, refused="its output has another shape")
    m.mismatches = int(np.count_nonzero(diff))
    m.max_lsb = int(diff.max(initial=0))
    if ref.ndim == 2 and ref.shape[1] > 1:
        top = np.argmax(out, axis=1)
        m.top1_changes = int(np.count_nonzero(top != np.argmax(ref, axis=1)))
        if labels is not None:
            m.correct, m.reference_correct = int(np.count_nonzero(top == labels)), ref_correct
    return m


def check_labels(labels, out_shape) -> None:
    """Labels must be classes of the output: 0 .. classes - 1."""
    labels = np.asarray(labels)
    if not labels.size:
        return
    classes = out_shape[0] if len(out_shape) == 1 else None
    lo, hi = int(labels.min()), int(labels.max())
    if classes is None or lo < 0 or hi >= classes:
        raise ValueError(f"labels range from {lo} to {hi}, but the graph's output "
                         f"{'has ' + str(classes) + ' classes (0..' + str(classes - 1) + ')' if classes else 'is no class score'}; "
                         "give the labels of this dataset for this network")


def sweep_batch(payload, x, labels=None) -> PassStats:
    """One batch of a pass: every candidate against the graph's own output (a shard task)."""
    graph, candidates = payload
    q = graph.quantize_input(x)
    traced = graph.run(q, trace=True)
    values = {graph.inputs[0].name: (q, graph.inputs[0].fmt.frac_bits)}
    values.update({name: (out.q, out.fmt.frac_bits) for name, out in traced.layers.items()})
    ref = traced.q
    if labels is not None:
        check_labels(labels, ref.shape[1:])
    ref_correct = int(np.count_nonzero(np.argmax(ref, axis=1) == labels)) \
        if labels is not None and ref.ndim == 2 else 0
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    metrics = {}
    for c in candidates:
        i = index[c.layer]
        try:
            out, _ = run_from(graph, values, i, _applied(graph.nodes[i], [c]))
            metrics[c.key] = _compare(out, ref, labels, ref_correct)
        except (ValueError, OverflowError) as err:
            metrics[c.key] = Metrics(len(ref), refused=str(err).splitlines()[0][:200])
    return PassStats(metrics)


@dataclasses.dataclass
class RegisterSweep:
    layer: str
    register: str
    reference: str  # the graph's own register
    reference_bits: int | None  # its width (None: unbounded)
    needed_bits: int  # on the data: nothing overflows at this width
    values: int  # per sample (a multiplier table: its entries)
    tried: list  # [(Candidate, Metrics)]
    chosen: Candidate | None  # the narrowest that met the criterion


@dataclasses.dataclass
class ProposalTried:
    """One combined check: every register at the proposal's width, all at once."""
    widened: int | None  # bits added to every narrowest choice (None: the safe widths)
    total_register_bits: int  # sum over the registers of width x values per sample
    metrics: Metrics
    passes: bool


@dataclasses.dataclass
class SweepReport:
    criterion: str
    samples: int
    registers: list  # RegisterSweep
    combined: Metrics | None
    combined_passes: bool
    widened: int | None  # bits added to every proposal for the combined check (None: the safe widths)
    proposal: list  # the Candidates applied to the proposed graph
    proposals_tried: list = dataclasses.field(default_factory=list)  # ProposalTried, in order
    input: TensorAudit | None = None  # the graph input's audit row
    input_fmt: Format | None = None

    @property
    def reference_total_bits(self) -> int:
        """The total register bits of the graph's own registers (`ProposalTried`'s measure; an
        unbounded register counts at the width it needs on the data)."""
        return sum((r.reference_bits or r.needed_bits) * r.values for r in self.registers)

    def input_warning(self, fraction: float = INPUT_WARNING_FRACTION) -> str | None:
        return None if self.input is None else row_input_warning(self.input, self.input_fmt, self.samples, fraction)

    def to_dict(self) -> dict:
        def metrics(m):
            return dataclasses.asdict(m) if m is not None else None
        return {"criterion": self.criterion, "samples": self.samples,
                "input": dataclasses.asdict(self.input) if self.input is not None else None,
                "registers": [{"layer": r.layer, "register": r.register, "reference": r.reference,
                               "reference_bits": r.reference_bits, "needed_bits": r.needed_bits,
                               "values": r.values,
                               "tried": [dict(dataclasses.asdict(c), metrics=metrics(m)) for c, m in r.tried],
                               "chosen": dataclasses.asdict(r.chosen) if r.chosen else None}
                              for r in self.registers],
                "combined": {"passes": self.combined_passes, "widened_bits": self.widened,
                             "metrics": metrics(self.combined)},
                "reference_total_register_bits": self.reference_total_bits,
                "proposals_tried": [dataclasses.asdict(p) for p in self.proposals_tried],
                "proposal": [dataclasses.asdict(c) for c in self.proposal]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def cells(self):
        head = ["layer", "register", "reference", "needed", "chosen", "overflow", "saved bits"]
        chosen = {(c.layer, c.register): c for c in self.proposal}
        body = []
        for r in self.registers:
            c = chosen.get((r.layer, r.register))
            body.append([r.layer, r.register, r.reference, str(r.needed_bits),
                         str(c.bits) if c else "-", c.overflow if c else "-",
                         str(r.needed_bits - c.bits) if c else "-"])
        return head, body

    def verdict(self) -> str:
        return (f"combined ({self.criterion}, {self.samples} samples): "
                + ("met" if self.combined_passes else "NOT met")
                + (f" after widening every proposal by {self.widened} bit(s)" if self.widened
                   else " with every register at its safe width" if self.widened is None else "")
                + f"; total register bits {self._proposal_bits()} a sample "
                  f"(the graph's own: {self.reference_total_bits})")

    def _proposal_bits(self) -> int:
        return self.proposals_tried[-1].total_register_bits if self.proposals_tried else self.reference_total_bits

    def to_table(self) -> str:
        head, body = self.cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
        return "\n".join(lines + [self.verdict()]) + "\n"

    def to_html(self) -> str:
        """The page (`sweep_page.sweep_html`)."""
        from .sweep_page import sweep_html
        return sweep_html(self, Criterion.parse(self.criterion))


def combined_batch(payload, x, labels=None) -> PassStats:
    """One batch of the combined check: the proposed graph against the graph itself."""
    reference, proposed = payload
    ref = reference.run(x).q
    if labels is not None:
        check_labels(labels, ref.shape[1:])
    ref_correct = int(np.count_nonzero(np.argmax(ref, axis=1) == labels)) \
        if labels is not None and ref.ndim == 2 else 0
    try:
        metrics = _compare(proposed.run(x).q, ref, labels, ref_correct)
    except (ValueError, OverflowError) as err:
        metrics = Metrics(len(ref), refused=str(err).splitlines()[0][:200])
    return PassStats({"combined": metrics})


@dataclasses.dataclass
class _Target:
    node: Node
    register: str
    needed: int  # the observed values' width
    safe: dict  # overflow mode -> a width at which the outputs cannot change on this data
    reference: str
    reference_bits: int | None  # the graph's own width (None: unbounded)
    values: int  # per sample


def _targets(graph: Graph, stats: AuditStats, audited, registers, layers, overflows) -> list:
    """The registers the sweep sizes, with the widths known to keep the outputs: an output
    register holds its observed values (nothing saturates; SAT_SYM needs the symmetric
    width); a wrapping accumulator holds the final sums (a wrap is exact modulo 2**bits); a
    saturating one must hold every partial sum: the audit's weight bound (|b| + sum |w| max|x|
    over the observed inputs). ``audited``: the `audit.AuditReport` of ``stats``."""
    rows = {(r.layer, r.tensor): r for r in audited.rows}
    out = []
    for node in graph.nodes:
        if layers is not None and node.name not in layers:
            continue
        for register in registers:
            spec = OPS[node.op]
            if register == "accumulator" and spec.mac == "multiply":  # the audit's bound: products
                acc = node.params.accumulator
                reference = f"{acc.bits} bits {acc.overflow.name}" if acc.bits else "exact"
                signed, own_bits = True, acc.bits
            elif register == "output" and spec.output_register(node.params) is not None:
                fmt = spec.output_register(node.params).fmt
                reference, signed, own_bits = fmt.describe(), fmt.signed, fmt.bits
            elif register == "multiplier" and node.op == "rescale":  # its own width keeps the outputs
                bits = node.params.multiplier_bits
                out.append(_Target(node, register, bits, {overflows[0]: bits}, f"{bits}-bit multipliers",
                                   bits, int(node.arrays["multiplier"].size)))
                continue
            else:
                continue
            t = stats.tensors[(node.name, register)]
            lo, hi = (t.lo, t.hi) if t.lo is not None else (0, 0)
            needed = bits_needed(lo, hi, signed)
            safe = {}
            for mode in overflows:
                if register == "accumulator":
                    safe[mode] = needed if mode == "WRAP" else max(needed, rows[(node.name, register)].bound_bits)
                else:
                    safe[mode] = bits_needed(lo, hi, signed, narrow=mode == "SAT_SYM" and signed)
            out.append(_Target(node, register, needed, safe, reference, own_bits,
                               rows[(node.name, register)].values))
    return out


def sweep(graph: Graph, data, criterion="exact", registers=REGISTERS, layers=None,
          overflows=("SAT",), min_bits: int = 2, client=None, batch=None, shard_size=None,
          progress=None, labels=None):
    """Size the registers of ``graph`` on ``data`` (as `audit` takes it); returns (SweepReport,
    the proposed Graph). ``progress(label)`` gives a `data.shards.Progress` per pass."""
    from ..data.shards import DEFAULT_BATCH, DEFAULT_SHARD, Progress, map_reduce
    from ..data.sources import open_data
    criterion = Criterion.parse(criterion) if isinstance(criterion, str) else criterion
    for mode in overflows:
        if mode not in ("SAT", "SAT_SYM", "WRAP"):
            raise ValueError(f"overflow mode {mode!r}: choose from SAT, SAT_SYM, WRAP")
    unknown = sorted(set(registers) - set(REGISTERS))
    if unknown or not registers:
        raise ValueError(f"registers {unknown or list(registers)}: choose from {list(REGISTERS)}")
    if layers is not None:
        missing = sorted(set(layers) - {n.name for n in graph.nodes})
        if missing:
            raise ValueError(f"layers {missing} are not in the graph")
    out_shape = graph.nodes[-1].out_shape if graph.nodes else None
    if criterion.kind in ("top1", "accuracy") and (out_shape is None or len(out_shape) != 1 or out_shape[0] < 2):
        raise ValueError(f"the {criterion.kind} criterion compares classes: it needs a classifier's "
                         f"output (N, classes), the graph's is (N, {', '.join(map(str, out_shape or ()))}); "
                         "use exact or lsb:N")
    source = open_data(data, graph.inputs[0].shape, labels=labels)
    if criterion.kind == "accuracy" and not getattr(source, "has_labels", True):
        raise ValueError("the accuracy criterion needs labels (an ImageFolder, an .npz with 'labels', "
                         "or --labels)")
    if isinstance(getattr(source, "labels", None), np.ndarray) and out_shape is not None:
        check_labels(source.labels, out_shape)
    batch, shard_size = batch or DEFAULT_BATCH, shard_size or DEFAULT_SHARD

    def run_pass(task, payload, label):
        return map_reduce(task, payload, source, batch, shard_size, client,
                          progress(label) if progress else Progress(None))

    stats = run_pass(audit_batch, graph, "audit")
    if stats is None:
        raise ValueError("the data holds no samples")
    audited = audit_report(graph, stats)
    targets = _targets(graph, stats, audited, registers, layers, overflows)
    for name in layers or ():
        if not any(t.node.name == name for t in targets):
            node = next(n for n in graph.nodes if n.name == name)
            raise ValueError(f"layer {name} ({node.op}) has no {' or '.join(registers)} register to "
                             "size; choose --layers and --registers that it has (accumulator: MAC "
                             "layers; output: layers with an output register)")
    if not targets:
        raise ValueError(f"the graph has no {' or '.join(registers)} register to size")
    widest = max(max(t.safe.values()) for t in targets)
    if min_bits > widest:
        raise ValueError(f"--min-bits {min_bits}: no register sized here needs more than {widest} "
                         f"bits on this data (a width that keeps every output); give at most {widest}")
    # a bisection per (register, mode): `lo` fails (or lies below the floor), `hi` keeps the
    # outputs (the safe width; then each width the criterion accepted)
    state = {}
    for t in targets:
        floor = max(min_bits, 1 if t.register == "output" and not t.node.params.out_fmt.signed else 2)
        for mode, safe in t.safe.items():
            state[(t.node.name, t.register, mode)] = [min(floor, safe) - 1, safe]
    tried: dict = {}
    while True:
        candidates = [Candidate(layer, register, (lo + hi) // 2, mode)
                      for (layer, register, mode), (lo, hi) in state.items() if hi - lo > 1]
        if not candidates:
            break
        result = run_pass(sweep_batch, (graph, candidates), f"sweep ({len(candidates)} candidates)")
        for c in candidates:
            m = tried[c] = result.metrics[c.key]
            state[(c.layer, c.register, c.overflow)][1 if criterion.holds(m) else 0] = c.bits
    sweeps, narrowest, safest = [], [], []
    for t in targets:
        name = t.node.name
        best = min((Candidate(name, t.register, state[(name, t.register, mode)][1], mode) for mode in t.safe),
                   key=lambda c: (c.bits, list(t.safe).index(c.overflow)))
        mine = sorted(((c, m) for c, m in tried.items() if (c.layer, c.register) == (name, t.register)),
                      key=lambda cm: (cm[0].overflow, cm[0].bits))
        sweeps.append(RegisterSweep(name, t.register, t.reference, t.reference_bits, t.needed, t.values,
                                    mine, best))
        narrowest.append(best)
        safest.append(dataclasses.replace(best, bits=t.safe[best.overflow]))
    # the narrowest choices together; widened a bit at a time (never beyond the safe widths)
    values = {(t.node.name, t.register): t.values for t in targets}
    tried_proposals = []

    def check(proposal, widened):
        proposed = apply(graph, proposal)
        metrics = run_pass(combined_batch, (graph, proposed), "combined check").metrics["combined"]
        passes = criterion.holds(metrics)
        tried_proposals.append(ProposalTried(widened, sum(c.bits * values[(c.layer, c.register)] for c in proposal),
                                             metrics, passes))
        return proposed, metrics, passes

    combined, passes, widened, proposal, proposed = None, not narrowest, 0, narrowest, graph
    for widened in range(MAX_WIDENINGS + 1):
        if not narrowest:
            break
        proposal = [dataclasses.replace(c, bits=min(c.bits + widened, s.bits)) for c, s in zip(narrowest, safest)]
        proposed, combined, passes = check(proposal, widened)
        if passes or proposal == safest:
            break
    if narrowest and not passes:  # the safe widths keep the outputs on this data
        proposal, widened = safest, None
        proposed, combined, passes = check(proposal, None)
    report = SweepReport(str(criterion), stats.samples, sweeps, combined, passes, widened, proposal,
                         tried_proposals, audited.input_row, graph.inputs[0].fmt)
    return report, proposed
