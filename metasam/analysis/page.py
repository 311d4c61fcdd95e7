"""One self-contained HTML page per study: the verdict first, then the race, the search, the
cost and (when ``compare`` has run) the test-set comparison; every plot embedded, no network.

The page is built from plain data (:class:`Section`\\ s of Markdown-style pipe tables, text
and PNG files) so that :mod:`metasam.analysis.report` owns *what* is shown and this module only
*how*. Nothing here reads a study.

    >>> html = render("demo", "digits-noisy, cnn", [Section("Verdict", text=["no verdict yet"])])
    >>> html.startswith("<!DOCTYPE html>") and "no verdict yet" in html
    True
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d2433; background: #f6f7f9; }
main { max-width: 1080px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 18px; margin: 30px 0 8px; border-bottom: 1px solid #d8dce3; padding-bottom: 4px; }
.sub { color: #5b6475; margin: 0 0 14px; }
.box { background: #fff; border: 1px solid #d8dce3; border-radius: 8px; padding: 14px 18px; }
.lead { font-size: 19px; font-weight: 600; margin: 0 0 8px; }
.yes { color: #0b7a3b; font-weight: 600; } .no { color: #8a5a00; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; font-size: 14px; }
th, td { border: 1px solid #d8dce3; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef0f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { color: #5b6475; font-size: 13px; margin: 6px 0; }
img { max-width: 100%; border: 1px solid #d8dce3; border-radius: 6px; background: #fff;
      margin: 8px 0; }
nav a { margin-right: 14px; color: #2250a8; text-decoration: none; font-size: 14px; }
"""

_NUMBER = re.compile(r"^[-+−]?[\d.,]+(\s*±\s*[\d.,]+)?(%| points)?$")


@dataclass
class Section:
    """A titled part of the page: a lead line, paragraphs, pipe tables and figures, in order
    of the lists (lead, text, tables, notes, figures)."""

    title: str
    lead: str | None = None
    text: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)     # Markdown pipe tables
    notes: list[str] = field(default_factory=list)      # small print under the tables
    figures: list[Path] = field(default_factory=list)   # PNG files, embedded
    boxed: bool = False

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def table_html(markdown: str) -> str:
    """A Markdown pipe table (header, separator, rows; ``**bold**`` and ``<sup>`` kept) as an
    HTML table; numeric cells right-aligned."""
    rows = [line.strip() for line in markdown.strip().splitlines() if line.strip()]
    rows = [r for r in rows if r.startswith("|")]
    if len(rows) < 2:
        return f"<p>{_inline(markdown)}</p>"

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{_inline(c)}</th>" for c in cells(rows[0]))
    body = []
    for line in rows[2:]:
        tds = []
        for c in cells(line):
            plain = re.sub(r"<[^>]+>|\*\*", "", c)
            cls = ' class="num"' if _NUMBER.match(plain) else ""
            tds.append(f"<td{cls}>{_inline(c)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _inline(text: str) -> str:
    """Escape, then restore the little Markdown and HTML the tables use (bold, sup, code)."""
    out = html.escape(text.replace("\\*", "*"), quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"&lt;(/?)sup&gt;", r"<\1sup>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def image_html(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="sub">{_inline(subtitle)}</p>',
             f"<nav>{nav}</nav>"]
    for s in sections:
        inner = []
        if s.lead:
            inner.append(f'<p class="lead">{_inline(s.lead)}</p>')
        inner += [f"<p>{_mark(_inline(t))}</p>" for t in s.text]
        inner += [table_html(t) for t in s.tables]
        inner += [f'<p class="note">{_inline(n)}</p>' for n in s.notes]
        inner += [image_html(f) for f in s.figures]
        body = "".join(inner)
        if s.boxed:
            body = f'<div class="box" id="{s.anchor}-box">{body}</div>'
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>{body}')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def _mark(text: str) -> str:
    """Colour the verdict's two outcomes."""
    text = text.replace("beats it with confidence",
                        '<span class="yes">beats it with confidence</span>')
    return text.replace("not with confidence", '<span class="no">not with confidence</span>')


def write_page(path: Path, title: str, subtitle: str, sections: list[Section]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(title, subtitle, sections), encoding="utf-8")
    return path
