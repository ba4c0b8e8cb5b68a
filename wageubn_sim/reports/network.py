"""The whole network at a glance: one line per register, in graph order, in bits. The declared
width as a band, the observed values as a box (quartiles of each value's own width, from the
histogram) with a whisker up to the needed width, the proposed, static and weight-bound
widths as marks, and the register's wraps, saturations and underflows beside it. Drawn as a
PNG for the audit page (with an image map linking each line to its histogram) and as text
bars for the terminal and the Markdown report."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..fixedpoint.format import bits_needed
from .pages import png_of, pyplot

ROW_INCHES = 0.19  # the figure's height per register
DPI = 90


@dataclasses.dataclass(frozen=True)
class Bar:
    label: str  # layer / tensor
    anchor: str  # the id of its histogram on the page
    declared: int | None  # bits; None for an unbounded register
    needed: int
    proposed: int
    static: int | None
    bound: int | None
    quartiles: tuple | None  # widths (bits) of the smallest, 25 %, 50 %, 75 % of its values
    events: tuple  # (name, count) of the events that happened

    @property
    def overflows(self) -> bool:
        return any(name in ("wraps", "saturations") for name, _ in self.events)


def value_widths(counts: np.ndarray, edges: np.ndarray, signed: bool) -> tuple | None:
    """(smallest, 25 %, 50 %, 75 % quantile) of the values' own widths, from a histogram on
    integer edges: each bin counts at the width that holds all of it. None when it is empty."""
    per_width = {}
    for i in np.flatnonzero(counts):
        lo, hi = int(edges[i]), int(edges[i + 1]) - 1
        width = bits_needed(lo if signed else max(lo, 0), hi, signed)
        per_width[width] = per_width.get(width, 0) + int(counts[i])
    if not per_width:
        return None
    widths = sorted(per_width)
    cumulative = np.cumsum([per_width[w] for w in widths])
    total = int(cumulative[-1])
    pick = [widths[int(np.searchsorted(cumulative, f * total))] for f in (0.25, 0.5, 0.75)]
    return (widths[0], *pick)


def bars_of(report) -> list:
    """A Bar per audited register of an `audit.AuditReport` (its constant tables left out)."""
    out = []
    for i, r in enumerate(report.rows):
        key = (r.layer, r.tensor)
        if key not in report.histograms:
            continue
        counts, edges, fmt, _, _ = report.histograms[key]
        events = tuple((name, getattr(r, name)) for name in ("wraps", "saturations", "underflows")
                       if getattr(r, name))
        out.append(Bar(f"{r.layer} / {r.tensor}", anchor(i), fmt.bits, r.needed_bits, r.proposed_bits,
                       r.static_bits, r.bound_bits, value_widths(counts, edges, fmt.signed), events))
    return out


def anchor(row: int) -> str:
    return f"h{row}"


def text_figure(bars) -> str:
    """One text bar per register, a character per bit: ``#`` the needed width within the
    declared one, ``.`` its headroom, ``!`` the bits beyond it (the register overflowed), ``~``
    an unbounded register's needed width; then the widths and the events."""
    if not bars:
        return ""
    label_width = max(len(b.label) for b in bars)
    scale = max(max(b.needed, b.declared or 0, b.proposed) for b in bars)
    lines = [f"{'register'.ljust(label_width)}  bits: # needed, . headroom, ! beyond the declared "
             "width, ~ unbounded"]
    for b in bars:
        if b.declared is None:
            bar = "~" * b.needed
            widths = f"needed {b.needed}, unbounded"
        else:
            bar = "#" * min(b.needed, b.declared) + "." * (b.declared - b.needed) + "!" * (b.needed - b.declared)
            widths = f"needed {b.needed} of {b.declared}"
        widths += f", proposed {b.proposed}"
        widths += "".join(f", {name} {w}" for name, w in (("static", b.static), ("bound", b.bound))
                          if w is not None)
        events = "".join(f"  {count} {name}" for name, count in b.events)
        lines.append(f"{b.label.ljust(label_width)}  {bar.ljust(scale)}  {widths}{events}")
    return "\n".join(lines) + "\n"


def _shown(bars, declared_label, proposed_label) -> set:
    """The legend entries the figure draws."""
    shown = {"needed", proposed_label}
    for b, (label, drawn) in ((b, x) for b in bars for x in (
            (declared_label, b.declared is not None), ("unbounded", b.declared is None),
            ("values' widths, quartiles", b.quartiles is not None), ("static", b.static is not None),
            ("weight bound", b.bound is not None))):
        if drawn:
            shown.add(label)
    return shown


def png_figure(bars, declared_label: str = "declared width", proposed_label: str = "proposed") -> tuple:
    """(base64 PNG, [(anchor, label, (x0, y0, x1, y1))]): the figure and each register's line in
    the image's pixels, for an image map. The labels name the band and the diamond in the
    legend (the sweep's are the graph's own width and the chosen one)."""
    plt = pyplot()
    rows = len(bars)
    top = max([max(b.needed, b.proposed, b.declared or 0, b.static or 0, b.bound or 0) for b in bars] + [8])
    fig, ax = plt.subplots(figsize=(9, 1.3 + ROW_INCHES * rows), dpi=DPI)
    y = np.arange(rows)
    for i, b in enumerate(bars):
        if b.declared is None:
            ax.barh(i, top + 1, height=0.8, color="#fff3cc", edgecolor="none")
        else:
            ax.barh(i, b.declared, height=0.8, color="#e4e4e4", edgecolor="#b0b0b0", linewidth=0.5)
        if b.quartiles is not None:
            smallest, q1, median, q3 = b.quartiles
            ax.hlines(i, smallest, b.needed, color="#1f5fa8", linewidth=1)
            ax.barh(i, max(q3 - q1, 0.2), left=q1 - (0.1 if q3 == q1 else 0), height=0.45, color="#1f5fa8")
            ax.vlines(median, i - 0.22, i + 0.22, color="white", linewidth=1.5)
        ax.vlines(b.needed, i - 0.4, i + 0.4, color="black", linewidth=2)
        ax.plot(b.proposed, i, "D", color="#2a9d2a", markersize=4)
        if b.static is not None:
            ax.plot(b.static, i, "x", color="#666666", markersize=5)
        if b.bound is not None:
            ax.plot(b.bound, i, "^", color="#8b3fa8", markersize=4)
        if b.events:
            ax.text(top + 1.3, i, " ".join(f"{count} {name}" for name, count in b.events),
                    va="center", fontsize=6.5, color="#c00000" if b.overflows else "#b06000")
    ax.set_yticks(y, [b.label for b in bars], fontsize=7)
    for tick, b in zip(ax.get_yticklabels(), bars):
        if b.events:
            tick.set_color("#c00000" if b.overflows else "#b06000")
    ax.set_ylim(rows - 0.5, -0.5)  # graph order, top down
    ax.set_xlim(0, top + 1)
    ax.set_xlabel("bits")
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(facecolor="#e4e4e4", edgecolor="#b0b0b0", label=declared_label),
               Patch(facecolor="#fff3cc", label="unbounded"),
               Patch(facecolor="#1f5fa8", label="values' widths, quartiles"),
               Line2D([], [], color="black", linewidth=2, label="needed"),
               Line2D([], [], marker="D", color="#2a9d2a", linestyle="", label=proposed_label),
               Line2D([], [], marker="x", color="#666666", linestyle="", label="static"),
               Line2D([], [], marker="^", color="#8b3fa8", linestyle="", label="weight bound")]
    shown = [h for h in handles if h.get_label() in _shown(bars, declared_label, proposed_label)]
    fig.legend(handles=shown, loc="upper center", ncol=len(shown), fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.93, 1 - 0.35 / fig.get_figheight()))
    fig.canvas.draw()
    height = fig.bbox.height
    areas = []
    for i, b in enumerate(bars):
        (x0, y0), (x1, y1) = ax.transData.transform([(0, i + 0.5), (top + 1, i - 0.5)])
        areas.append((b.anchor, b.label, (0, int(height - y1), int(fig.bbox.width), int(height - y0))))
    return png_of(fig), areas
