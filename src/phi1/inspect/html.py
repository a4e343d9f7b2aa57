"""Plain, self-contained HTML for the inspection pages: no scripts, no external resources."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1600px}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f4f4f4;position:sticky;top:0}
pre,code,.snip{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere;margin:0;max-width:720px}
table.fixed{table-layout:fixed;width:100%}table.fixed td:first-child,table.fixed th:first-child{width:11%}
.snip{display:inline-block;margin:1px 6px 1px 0;padding:1px 3px;border:1px solid #e3e3e3;border-radius:3px;
      white-space:pre;background:#fff}
.tok{border-radius:2px}
.top{outline:1.5px solid #c0392b}
.pass{color:#1e7e34;font-weight:600}.fail{color:#b02a37;font-weight:600}.none{color:#888}
.muted{color:#666;font-size:90%}
img{max-width:100%}
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>{''.join(body)}</body></html>\n")


def table(header: list[str], rows: list[list[str]], raw: bool = False, cls: str = "") -> str:
    """A table; cells are escaped unless `raw` (then they are trusted HTML made here)."""
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    cell = (lambda c: str(c)) if raw else esc
    trs = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f" class='{esc(cls)}'" if cls else ""
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<figure><img alt='{esc(alt)}' src='data:image/png;base64,{data}'><figcaption class='muted'>{esc(alt)}</figcaption></figure>"


def visible(token: str) -> str:
    """A token's text with newlines and tabs made visible, so a snippet stays on one line."""
    return token.replace("\r", "\\r").replace("\n", "\u21b5").replace("\t", "\u2192")


def snippet(tokens: list[str], weights: list[float], center: int, title: str = "") -> str:
    """Tokens as spans shaded by weight in [0, 1]; the token at `center` is outlined."""
    spans = []
    for i, (t, w) in enumerate(zip(tokens, weights)):
        a = max(0.0, min(1.0, float(w)))
        cls = "tok top" if i == center else "tok"
        spans.append(f"<span class='{cls}' style='background:rgba(255,140,0,{a:.2f})'>{esc(visible(t))}</span>")
    t = f" title='{esc(title)}'" if title else ""
    return f"<span class='snip'{t}>{''.join(spans)}</span>"
