"""HTML building blocks shared by the report and the status page: one inline stylesheet (screen and
print), escaping, tables and money. No external assets: every page opens offline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from sync.ops import money_display

CSS = """
:root { --fg:#1d2430; --muted:#5b6575; --line:#d9dee7; --bg:#f6f7f9; --card:#fff; --accent:#1f5fbf;
        --bad:#b42318; --warn:#b54708; --ok:#067647; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
header.top { background:#17223b; color:#fff; padding:10px 20px; display:flex; gap:24px; align-items:center;
             flex-wrap:wrap; }
header.top h1 { font-size:17px; margin:0; font-weight:600; }
header.top a { color:#cfe0ff; text-decoration:none; }
header.top a:hover { text-decoration:underline; }
header.top .who { margin-left:auto; color:#cfd6e4; font-size:13px; }
main { padding:16px 20px 40px; max-width:1400px; }
h2 { font-size:16px; margin:22px 0 8px; }
h3 { font-size:14px; margin:16px 0 6px; }
p.muted, span.muted, .muted { color: var(--muted); }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin:8px 0 4px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:170px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:22px; font-weight:600; }
.card ul { margin:2px 0 0; padding:0; list-style:none; }
table { border-collapse:collapse; background:var(--card); border:1px solid var(--line); width:100%; margin:4px 0 8px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f6; font-weight:600; font-size:12px; color:#344054; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tr:nth-child(even) td { background:#fafbfc; }
code, pre { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre { background:#0f172a; color:#e2e8f0; padding:10px; border-radius:6px; overflow:auto; max-height:340px;
      white-space:pre-wrap; word-break:break-word; }
.kind { display:inline-block; padding:1px 7px; border-radius:10px; background:#e8eefc; color:#1d3f8f;
        font-size:12px; white-space:nowrap; }
.status-open { color:var(--warn); font-weight:600; }
.status-resolved { color:var(--ok); font-weight:600; }
.status-ignored { color:var(--muted); font-weight:600; }
.bad { color:var(--bad); font-weight:600; } .ok { color:var(--ok); font-weight:600; }
.next { color:#344054; }
form.inline { display:inline; }
form.filters { display:flex; gap:10px; flex-wrap:wrap; align-items:flex-end; background:var(--card);
               border:1px solid var(--line); border-radius:8px; padding:10px; margin:8px 0; }
form.filters label, form.action label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
input, select, textarea, button { font:inherit; padding:4px 6px; border:1px solid #b9c1cf; border-radius:5px; }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; padding:5px 12px; }
button.secondary { background:#fff; color:var(--accent); }
.actions { display:flex; gap:14px; flex-wrap:wrap; }
form.action { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px;
              display:flex; flex-direction:column; gap:6px; min-width:260px; }
.notice { padding:8px 12px; border-radius:6px; margin:8px 0; background:#fff4e5; border:1px solid #f5c27a; }
.notice.ok { background:#ecfdf3; border-color:#75e0a7; }
.notice.bad { background:#fef3f2; border-color:#fda29b; }
dl.kv { display:grid; grid-template-columns: max-content 1fr; gap:3px 14px; background:var(--card);
        border:1px solid var(--line); border-radius:8px; padding:10px 14px; margin:6px 0; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; }
footer { color:var(--muted); font-size:12px; margin-top:28px; }
@media print {
  @page { size: A4 landscape; margin: 12mm; }
  body { background:#fff; font-size:10pt; }
  header.top { background:#fff; color:#000; border-bottom:2px solid #000; padding:0 0 6px; }
  header.top a, header.top .who, nav, form, .noprint { display:none !important; }
  main { padding:0; max-width:none; }
  .card { border:1px solid #999; }
  table { border:1px solid #999; }
  th { background:#eee !important; -webkit-print-color-adjust:exact; print-color-adjust:exact; }
  thead { display:table-header-group; }
  tr, .card, dl.kv { break-inside:avoid; page-break-inside:avoid; }
  h2 { break-after:avoid; page-break-after:avoid; }
  pre { background:#fff; color:#000; border:1px solid #999; max-height:none; }
  a { color:#000; text-decoration:none; }
}
"""


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def attrs(**values: Any) -> str:
    """` data-x="..."` attributes (underscores become dashes; None values are left out)."""
    return "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in values.items() if v is not None)


def page(title: str, body: str, *, nav: str = "", who: str = "", extra_head: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style>{extra_head}</head>\n<body>"
            f"<header class=\"top\"><h1>{esc(title)}</h1>{nav}"
            f"{f'<span class=who>{who}</span>' if who else ''}</header>\n<main>{body}</main></body></html>\n")


def table(headers: Iterable[str | tuple[str, str]], rows: Iterable[str], *, id: str | None = None,  # noqa: A002
          empty: str = "nothing here") -> str:
    """`headers` are labels or (label, css class); `rows` are ready `<tr>` strings."""
    head = "".join(f"<th class=\"{esc(h[1])}\">{esc(h[0])}</th>" if isinstance(h, tuple) else f"<th>{esc(h)}</th>"
                   for h in headers)
    body = "".join(rows)
    if not body:
        return f"<p class=\"muted\"{attrs(id=id)}>{esc(empty)}</p>"
    return f"<table{attrs(id=id)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def money_cell(amounts: Mapping[str, str] | None, *, cls: str = "num") -> str:
    """One cell with the amount of each currency (`data-currency`, `data-value` carry the exact text)."""
    if not amounts:
        return f"<td class=\"{cls}\">-</td>"
    parts = "<br>".join(f"<span class=\"money\"{attrs(data_currency=cur, data_value=val)}>"
                        f"{esc(money_display(val, cur))}</span>" for cur, val in amounts.items())
    return f"<td class=\"{cls}\">{parts}</td>"


def kind_badge(kind: str) -> str:
    return f"<span class=\"kind\">{esc(kind)}</span>"


def status_span(status: str) -> str:
    return f"<span class=\"status-{esc(status)}\">{esc(status)}</span>"
