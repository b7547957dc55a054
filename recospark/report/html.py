"""A self-contained HTML page: inline CSS, images as base64 data URIs, nothing fetched.

Every text that comes from data (titles, model names) goes through `html.escape`. A tiny
inline script records on load how many images decoded (`data-images-ok` on <body>), so a
headless browser check can read the answer from the DOM without any network or driver.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#666;font-size:.9rem} .note{color:#8a6d3b;background:#fcf8e3;padding:.5rem .8rem;border-radius:4px}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} td.best{font-weight:bold;background:#e8f5e9}
img{max-width:100%;display:block;margin:.6rem 0} .grid{display:flex;flex-wrap:wrap;gap:1rem}
.user{margin:1.2rem 0} nav a{margin-right:.8rem}
"""

# Counts decoded images once everything has loaded; the browser test reads these attributes.
_SELF_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-tables', String(document.getElementsByTagName('table').length));
});
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: its anchor id, heading and body HTML (the body is trusted: build it from `esc`, `table`, `img`, `note`, `para`)."""

    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    """Any value as HTML text, quotes escaped too (safe in attributes): the one way data enters the page.

    >>> esc('<Movie "1"> & sons')
    '&lt;Movie &quot;1&quot;&gt; &amp; sons'
    """
    return html.escape(str(value), quote=True)


def img(png: bytes, alt: str) -> str:
    """A PNG inlined as a base64 data URI, so the page fetches nothing."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    """A highlighted paragraph: how a missing input shows in the page instead of failing the report."""
    return f'<p class="note">{esc(text)}</p>'


def para(text: str) -> str:
    """A paragraph of escaped text."""
    return f"<p>{esc(text)}</p>"


def fmt(value: Any) -> str:
    """How a value prints in a table: floats to 4 decimals (thousands grouped from 1000 on), ints grouped, None as a dash.

    >>> fmt(0.123456), fmt(12345.6), fmt(1234567), fmt(None), fmt(True)
    ('0.1235', '12,346', '1,234,567', '–', 'True')
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    id: str | None = None,
    best: Sequence[Sequence[bool]] | None = None,
    left: int = 1,
) -> str:
    """Cells are escaped; the first `left` columns are left-aligned; `best` marks cells to highlight."""
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            classes = (["l"] if c < left else []) + (["best"] if best and best[r][c] else [])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(id)}"' if id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, meta: str, sections: Sequence[Section]) -> str:
    """The whole document: title, meta line, a navigation bar and the sections, with inline CSS, a CSP that forbids
    fetching anything, and the image self-check script.
    """
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing may be fetched: every resource is inline.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{esc(title)}</h1><p class="meta">{esc(meta)}</p><nav>{nav}</nav>',
    ]
    for s in sections:
        parts.append(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>')
    parts.append(f"<script>{_SELF_CHECK}</script></body></html>")
    return "\n".join(parts)
