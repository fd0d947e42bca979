"""Pieces of a self-contained HTML report: the page, a sortable table, embedded images.

Pure functions from data to HTML text. The page needs no server and no network: figures and
images are ``data:`` URIs (or links to files beside the report), the style sheet and the one
script are inline, and a Content-Security-Policy allows exactly those (by their hashes) and
nothing else, so a report can never fetch anything, and an injected ``<script>`` would not run
even if some text escaped :func:`esc`.

Every text shown goes through :func:`esc`: case ids, file names and error messages come from
the user's data.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

__all__ = ["Column", "esc", "data_uri", "figure_uri", "image_uri", "zoom_link", "sortable_table",
           "key_values", "page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.5em 0 .5em}
.sub{color:#555;margin:0 0 1em}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th[data-kind]{cursor:pointer;user-select:none;background:#f3f3f3}
th[data-kind]:hover{background:#e6e6e6}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.positive td{background:#fff1f0}tr.failed td{background:#f6f6f6;color:#777}
td.error{color:#a00;max-width:28em;word-break:break-word}
table.kv th{background:none;font-weight:600;cursor:auto}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.figs img{max-width:420px;border:1px solid #eee}
img.thumb{display:block;border:1px solid #ccc}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;flex-direction:column;
 align-items:center;justify-content:center;z-index:10;cursor:zoom-out}
#lightbox[hidden]{display:none}
#lightbox img{height:85vh;max-width:95vw;object-fit:contain}
#lightbox p{color:#eee;margin:.5em}
"""

# Sorting (a click or Enter on a header; empty cells, e.g. failed cases, stay last) and the
# lightbox (a click on a zoom link shows its href full size; Escape or a click closes it).
_SCRIPT = """
(function () {
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var num = th.getAttribute('data-kind') === 'num';
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll('th[data-kind]').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') { sortBy(th); } });
  });
  var box = document.getElementById('lightbox'), img = document.getElementById('lightbox-img');
  var cap = document.getElementById('lightbox-caption');
  function close() { box.hidden = true; img.removeAttribute('src'); }
  document.addEventListener('click', function (e) {
    var a = e.target.closest('a.zoom');
    if (a) {
      e.preventDefault();
      img.src = a.getAttribute('href');
      cap.textContent = a.getAttribute('data-caption') || '';
      box.hidden = false;
    } else if (!box.hidden) { close(); }
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') { close(); } });
})();
"""


@dataclass(frozen=True)
class Column:
    """A column of :func:`sortable_table`.

    Attributes:
        key: the row field shown.
        title: the header text.
        kind: ``num`` (sorted as numbers, shown with ``digits`` decimals), ``text`` (sorted as
            text) or ``html`` (already safe HTML built with :func:`esc`, not sortable).
        digits: decimals of a ``num`` column.
    """

    key: str
    title: str
    kind: str = "text"
    digits: int = 3


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` as a ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig: Figure) -> str:
    """A matplotlib figure as an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return data_uri(buf.getvalue())


def image_uri(path: str | Path, max_side: int | None = None, fmt: str = "PNG") -> str:
    """An image file as an embedded ``PNG`` or ``JPEG``, shrunk to ``max_side`` pixels a side if larger.

    Raises:
        OSError: the file cannot be read as an image.
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side is not None:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"optimize": True}))
    return data_uri(buf.getvalue(), f"image/{fmt.lower()}")


def zoom_link(full: str, inner: str, caption: str) -> str:
    """``inner`` (safe HTML, e.g. a thumbnail) as a link that opens ``full`` (a URI) in the lightbox."""
    return f'<a class="zoom" href="{esc(full)}" data-caption="{esc(caption)}">{inner}</a>'


def _cell(col: Column, value: Any) -> str:
    if col.kind == "html":
        return f"<td>{value or ''}</td>"
    if col.kind == "num":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        shown = f"{value:.{col.digits}f}" if ok else "\u2014"
        return f'<td class="num" data-v="{repr(float(value)) if ok else ""}">{shown}</td>'
    text = "" if value is None else str(value)
    cls = ' class="error"' if col.key == "error" and text else ""
    return f'<td{cls} data-v="{esc(text)}">{esc(text) or chr(0x2014)}</td>'


def _row(row: Mapping[str, Any], columns: Sequence[Column], row_class: str) -> str:
    cls = f' class="{esc(row[row_class])}"' if row.get(row_class) else ""
    return f"<tr{cls}>" + "".join(_cell(c, row.get(c.key)) for c in columns) + "</tr>"


def sortable_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], row_class: str = "_class",
                   table_id: str = "cases") -> str:
    """A table whose ``num`` and ``text`` columns sort on a click on their header.

    Args:
        columns: what to show, in order.
        rows: one mapping a row; ``row[row_class]``, if any, is the row's CSS class.
        table_id: the table's ``id``.
    """
    head = "".join(f"<th>{esc(c.title)}</th>" if c.kind == "html" else
                   f'<th data-kind="{c.kind}" tabindex="0" title="sort">{esc(c.title)}</th>' for c in columns)
    body = "\n".join(_row(r, columns, row_class) for r in rows)
    return f'<table id="{esc(table_id)}" class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def key_values(items: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of names and values (floats with 3 decimals)."""
    def shown(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(shown(v))}</td></tr>" for k, v in items if v is not None)
    return f'<table class="kv">{rows}</table>'


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page(title: str, body: str, subtitle: str = "") -> str:
    """The whole HTML document: ``body`` (safe HTML) with the style sheet, the script and the lightbox.

    The Content-Security-Policy admits this page's own style and script (by hash) and images
    from ``data:`` URIs or files next to the report, nothing else.
    """
    csp = (f"default-src 'none'; img-src data: 'self'; style-src {_sha256(_STYLE)}; "
           f"script-src {_sha256(_SCRIPT)}; base-uri 'none'; form-action 'none'")
    sub = f'<p class="sub">{esc(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{esc(title)}</h1>{sub}\n{body}\n"
        '<div id="lightbox" hidden role="dialog" aria-label="full size image">'
        '<img id="lightbox-img" alt="full size"><p id="lightbox-caption"></p></div>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )
