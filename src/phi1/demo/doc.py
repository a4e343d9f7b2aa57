"""A tiny document model rendered to both Markdown and self-contained HTML (figures inlined)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h(self, text: str, level: int = 2):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[object]]):
        self.blocks.append(("table", (header, rows)))

    def code(self, text: str, lang: str = ""):
        self.blocks.append(("code", (lang, text)))

    def image(self, path: Path, alt: str):
        self.blocks.append(("img", (Path(path), alt)))

    # ---- renderers ---------------------------------------------------
    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h":
                level, text = val
                out += ["#" * level + " " + text, ""]
            elif kind == "p":
                out += [str(val), ""]
            elif kind == "table":
                header, rows = val
                out.append("| " + " | ".join(header) + " |")
                out.append("| " + " | ".join("---" for _ in header) + " |")
                for r in rows:
                    out.append("| " + " | ".join(_cell(c) for c in r) + " |")
                out.append("")
            elif kind == "code":
                lang, text = val
                fence = "````" if "```" in text else "```"
                out += [fence + lang, text.rstrip("\n"), fence, ""]
            elif kind == "img":
                path, alt = val
                rel = path.relative_to(base) if path.is_relative_to(base) else path
                out += [f"![{alt}]({rel.as_posix()})", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, val in self.blocks:
            if kind == "h":
                level, text = val
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(str(val))}</p>")
            elif kind == "table":
                header, rows = val
                th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(val[1])}</code></pre>")
            elif kind == "img":
                path, alt = val
                if path.exists():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    body.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                                f"<figcaption>{html.escape(alt)}</figcaption></figure>")
                else:
                    body.append(f"<p><em>figure missing: {html.escape(str(path))}</em></p>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "text-align:left;vertical-align:top}th{background:#f4f4f4}pre{background:#f6f8fa;padding:1em;"
                 "overflow-x:auto;font-size:12px}img{max-width:100%}figcaption{color:#666;font-size:90%}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _cell(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c).replace("|", "\\|").replace("\n", " ")
