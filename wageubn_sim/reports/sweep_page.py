"""The width sweep's page: every register's chosen width against its needed and its own in
one figure, the table, the proposals tried (total register bits against the criterion's
score, with their Pareto front), then per register its score against its width, in the
criterion's own terms (`sweep.Criterion.score`)."""
from __future__ import annotations

import html

from .network import Bar, png_figure
from .pages import image, image_map, page, png_of, pyplot, table


def sweep_html(report, crit) -> str:
    """The page of a `sweep.SweepReport` whose criterion ``crit`` is (parsed)."""
    head, body = report.cells()
    parts = [f"<h1>Width sweep ({html.escape(report.criterion)}, {report.samples} samples)</h1>",
             f"<p>{html.escape(report.verdict())}</p>"]
    warning = report.input_warning()
    if warning:
        parts.append(f"<p class='warning'>Warning: {html.escape(warning)}.</p>")
    bars = _bars(report)
    if bars:
        png, areas = png_figure(bars, "the graph's own width", "chosen")
        parts.append("<h2>Every register: chosen against needed and reference width</h2>"
                     + image(png, "every register's chosen, needed and reference width in bits", "registers")
                     + image_map("registers", areas))
    parts.append("<h2>Registers</h2>" + table(head, body, [b.anchor for b in bars]))
    if report.proposals_tried:
        parts.append("<h2>Proposals tried: total register bits against the criterion</h2>"
                     + image(_pareto(report, crit), f"total register bits against {crit.score_name}"))
    parts.append(f"<h2>{html.escape(crit.score_name.capitalize())} against width, per register "
                 "(the others at the graph's own)</h2>")
    for b, png in zip(bars, _plots(report, crit)):
        parts.append(f"<details id='{b.anchor}' open><summary>{html.escape(b.label)}</summary>"
                     + image(png, f"{crit.score_name} against the width of {b.label}") + "</details>")
    return page("wageubn-sim width sweep", "".join(parts))


def _bars(report) -> list:
    chosen = {(c.layer, c.register): c for c in report.proposal}
    bars = []
    for i, r in enumerate(report.registers):
        c = chosen.get((r.layer, r.register))
        bars.append(Bar(f"{r.layer} / {r.register}", f"r{i}", r.reference_bits, r.needed_bits,
                        c.bits if c else r.needed_bits, None, None, None, ()))
    return bars


def _plots(report, crit):
    plt = pyplot()
    for r in report.registers:
        fig, ax = plt.subplots(figsize=(5, 2.2), dpi=80)
        for mode in sorted({c.overflow for c, _ in r.tried}):
            points = sorted((c.bits, crit.score(m)) for c, m in r.tried if c.overflow == mode)
            if points:
                ax.plot(*zip(*points), marker="o", label=mode)
        ax.axvline(r.needed_bits, color="gray", linestyle=":", linewidth=1)
        if r.chosen is not None:
            ax.axvline(r.chosen.bits, color="green", linestyle="--", linewidth=1)
        if r.tried:
            ax.axhline(crit.limit(r.tried[0][1]), color="red", linestyle="-.", linewidth=1,
                       label="criterion")
        ax.set_xlabel("bits (dotted: needed on the data; dashed: narrowest alone)", fontsize=8)
        ax.set_ylabel(crit.score_name, fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        yield png_of(fig)


def _pareto(report, crit) -> str:
    """Each combined check as a point, total register bits against the score; the graph's
    own registers for reference; the points no other beats on both drawn as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    higher_is_better = crit.kind in ("top1", "accuracy")
    points = [(p.total_register_bits, crit.score(p.metrics), p) for p in report.proposals_tried]
    for bits, score, p in points:
        ax.plot(bits, score, "o", color="#2a9d2a" if p.passes else "#c00000")
        ax.annotate("safe" if p.widened is None else f"+{p.widened}", (bits, score), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    m = report.proposals_tried[0].metrics
    ax.plot(report.reference_total_bits, crit.own_score(m), "s", color="black", label="the graph's own")
    front, best = [], None
    for bits, score, _ in sorted(points, key=lambda t: (t[0], -t[1] if higher_is_better else t[1])):
        if score == score and (best is None or (score > best if higher_is_better else score < best)):
            front.append((bits, score))
            best = score
    if len(front) > 1:
        ax.plot(*zip(*front), color="#888888", linewidth=1, label="Pareto front")
    ax.axhline(crit.limit(m), color="red", linestyle="-.", linewidth=1, label="criterion")
    ax.set_xlabel("total register bits a sample (width x values)", fontsize=8)
    ax.set_ylabel(crit.score_name, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_of(fig)
