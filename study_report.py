"""The study's pages: `tables.md` and `report.html`, rendered from one description of the tables.

`study.py` decides what the tables and figures say; this module only writes them down, so the markdown
and the HTML can never disagree. `report.html` is one self-contained file: CSS inline, every plot a
base64 PNG inside its `<img>`, no script and no external resource, so it opens offline, from an
e-mail attachment or a CI artifact, and reads the same in ten years.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from uverify.errors import UverifyError
from uverify.files import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Table:
    """One table: cells are already formatted text; columns from `numeric_from` on are right-aligned."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    numeric_from: int = 1
    id: str = ""


@dataclass(frozen=True)
class Figure:
    title: str
    png: Path
    caption: str
    id: str = ""
    wide: bool = False  # a row to itself (one panel per data set)


@dataclass(frozen=True)
class Section:
    title: str
    tables: list[Table]
    paragraphs: list[str] = field(default_factory=list)
    id: str = ""


@dataclass(frozen=True)
class Page:
    title: str
    intro: list[str]
    findings: list[str]
    sections: list[Section]  # in order; the figures go after the first one (the seed's tables)
    figures: list[Figure]
    specs: dict[str, str]  # data set -> its validated spec as YAML
    versions: dict[str, str]
    generated: str


# ------------------------------------------------------------------------------------------ markdown
def table_markdown(table: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(table.header) + " |")
    aligns = ["---" if i < table.numeric_from else "---:" for i in range(len(table.header))]
    lines.append("|" + "|".join(aligns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def section_markdown(section: Section) -> str:
    parts = [f"## {section.title}", ""]
    parts += [p + "\n" for p in section.paragraphs]
    parts += [table_markdown(t) for t in section.tables]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------- html
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
p.meta { color: #57606a; margin-top: 0; }
ul.findings { background: #f6f8fa; border-left: 4px solid #0969da; padding: .8em 1em .8em 2.2em; }
table { border-collapse: collapse; margin: .3em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; }
th { background: #f6f8fa; text-align: center; }
td.num { text-align: right; white-space: nowrap; } td.text { text-align: left; }
td.num.moved { white-space: normal; }
p.note { color: #57606a; font-size: .92em; margin: .1em 0 .3em; }
div.figures { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; flex: 1 1 520px; } figure.wide { flex-basis: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
div.scroll { overflow-x: auto; }
figcaption { color: #57606a; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _id(text: str) -> str:
    return f' id="{_esc(text)}"' if text else ""


def _cell_class(column: int, text: str, table: Table) -> str:
    """Numbers right-aligned on one line; a `before → after (change)` cell may break at its spaces, so
    the widest tables still fit the page."""
    if column < table.numeric_from:
        return "text"
    return "num moved" if " → " in text else "num"


def table_html(table: Table) -> str:
    out = [f"<h3{_id(table.id)}>{_esc(table.title)}</h3>"]
    if table.note:
        out.append(f'<p class="note">{_esc(table.note)}</p>')
    out.append(f'<div class="scroll"><table{_id(table.id and table.id + "-table")}>')
    out.append("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in table.header) + "</tr></thead><tbody>")
    for row in table.rows:
        cells = "".join(f'<td class="{_cell_class(i, c, table)}">{_esc(c)}</td>' for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _png_data_uri(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UverifyError(f"report: cannot read plot {path}: {exc.strerror or exc}") from None
    if not data.startswith(PNG_SIGNATURE):
        raise UverifyError(f"report: plot {path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(figure: Figure) -> str:
    wide = ' class="wide"' if figure.wide else ""
    return (
        f"<figure{_id(figure.id)}{wide}>"
        f'<img src="{_png_data_uri(figure.png)}" alt="{_esc(figure.title)}">'
        f"<figcaption><strong>{_esc(figure.title)}.</strong> {_esc(figure.caption)}</figcaption></figure>"
    )


def _section_html(section: Section) -> str:
    out = [f"<section{_id(section.id)}><h2>{_esc(section.title)}</h2>"]
    out += [f"<p>{_esc(p)}</p>" for p in section.paragraphs]
    out += [table_html(t) for t in section.tables]
    out.append("</section>")
    return "\n".join(out)


def render_html(page: Page) -> str:
    """The whole page as one string: no script, no link, no external URL."""
    body = [f"<h1>{_esc(page.title)}</h1>", f'<p class="meta">{_esc(page.generated)}</p>']
    body += [f"<p>{_esc(p)}</p>" for p in page.intro]
    if page.findings:
        body.append('<ul class="findings" id="findings">' + "".join(f"<li>{_esc(f)}</li>" for f in page.findings))
        body.append("</ul>")
    for i, section in enumerate(page.sections):
        body.append(_section_html(section))
        if i == 0 and page.figures:
            body.append('<section id="plots"><h2>Plots</h2><div class="figures">')
            body += [figure_html(f) for f in page.figures]
            body.append("</div></section>")
    body.append('<section id="spec"><h2>Spec</h2>')
    for name, text in page.specs.items():
        body.append(f"<h3>{_esc(name)}</h3><pre>{_esc(text)}</pre>")
    body.append("</section>")
    body.append('<section id="versions"><h2>Tool versions</h2>')
    body.append(
        table_html(Table("Versions", ["tool", "version"], [[k, v] for k, v in page.versions.items()], numeric_from=2))
    )
    body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(page.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_html(path: str | Path, page: Page) -> Path:
    return atomic_write_bytes(Path(path), render_html(page).encode("utf-8"))


__all__ = [
    "Figure",
    "Page",
    "Section",
    "Table",
    "render_html",
    "section_markdown",
    "table_markdown",
    "write_html",
]
