"""What the audit's and the sweep's pages share: matplotlib figures as embedded PNG (the same
bytes for the same figure) and one self-contained HTML page around them."""
from __future__ import annotations

import base64
import html
import io

STYLE = ("body{font-family:sans-serif;max-width:1100px}table{border-collapse:collapse}"
         "td,th{border:1px solid #999;padding:2px 6px;text-align:right}"
         "td:first-child,td:nth-child(2){text-align:left}"
         "details{margin:4px 0}summary{cursor:pointer}.warning{color:#a00;font-weight:bold}")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png_of(fig) -> str:
    """The figure as base64 PNG, without the software and date fields that vary between runs;
    the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def image(png: str, alt: str, usemap: str = "") -> str:
    mapped = f' usemap="#{usemap}"' if usemap else ""
    return f'<img alt="{html.escape(alt)}"{mapped} src="data:image/png;base64,{png}">'


def image_map(name: str, areas) -> str:
    """An image map of rectangles, each a link: areas are (anchor, label, (x0, y0, x1, y1))."""
    return (f"<map name='{name}'>" + "".join(
        f'<area shape="rect" coords="{x0},{y0},{x1},{y1}" href="#{a}" alt="{html.escape(label)}">'
        for a, label, (x0, y0, x1, y1) in areas) + "</map>")


def table(head, body, links=None) -> str:
    """An HTML table; ``links[i]``, where given, makes row i's first cell a link to that id."""
    rows = []
    for i, row in enumerate(body):
        cells = [html.escape(c) for c in row]
        if links and links[i]:
            cells[0] = f'<a href="#{links[i]}">{cells[0]}</a>'
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + body + "</body></html>\n")
