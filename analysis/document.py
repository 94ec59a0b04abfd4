"""report.md and index.html from one `Document`: the same sections, tables and figures in both."""
from __future__ import annotations

import html
import numbers
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class FigureEntry:
    """A saved figure: the file the documents show (relative to them), its heading, its one-line caption."""

    file: str
    title: str
    caption: str
    other_files: tuple[str, ...] = ()  # the same figure in other formats, linked


@dataclass(frozen=True)
class Section:
    """A heading with paragraphs, an optional table of strings and optional code."""

    title: str
    paragraphs: tuple[str, ...] = ()
    table: pd.DataFrame | None = None
    code: str = ""
    code_language: str = ""


@dataclass(frozen=True)
class Document:
    title: str
    facts: tuple[tuple[str, str], ...]
    sections_before: tuple[Section, ...]
    figures: tuple[FigureEntry, ...]
    sections_after: tuple[Section, ...] = field(default_factory=tuple)


def markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in doc.facts] + [""]
    for section in doc.sections_before:
        lines += _markdown_section(section)
    lines += ["## Figures", ""]
    for number, figure in enumerate(doc.figures, start=1):
        lines += [f"### {number}. {figure.title}", "", f"![{figure.title}]({figure.file})", "", figure.caption]
        if figure.other_files:
            lines[-1] += " Also as " + ", ".join(f"[{name}]({name})" for name in figure.other_files) + "."
        lines.append("")
    for section in doc.sections_after:
        lines += _markdown_section(section)
    return "\n".join(lines).rstrip() + "\n"


def _markdown_section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    for paragraph in section.paragraphs:
        lines += [paragraph, ""]
    if section.table is not None and len(section.table):
        lines += [markdown_table(section.table), ""]
    if section.code:
        fence = "~~~" if "```" in section.code else "```"
        lines += [f"{fence}{section.code_language}", section.code.rstrip("\n"), fence, ""]
    return lines


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table of a DataFrame's string values; numbers right-aligned."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if _numeric(table[column]) else "---" for column in table.columns]
    rows = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "| " + " | ".join(align) + " |"]
    rows += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(rows)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
td.number { text-align: right; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { color: #444; }
"""


def html_page(doc: Document) -> str:
    """A standalone page; figures are <img> of the files beside it."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(doc.title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{esc(doc.title)}</h1>", "<ul>"]
    parts += [f"<li><strong>{esc(key)}</strong>: {esc(value)}</li>" for key, value in doc.facts]
    parts.append("</ul>")
    for section in doc.sections_before:
        parts += _html_section(section)
    parts.append("<h2>Figures</h2>")
    for number, figure in enumerate(doc.figures, start=1):
        links = "".join(f' <a href="{esc(name)}">{esc(name)}</a>' for name in figure.other_files)
        image = (f'<img src="{esc(figure.file)}" alt="{esc(figure.title)}">' if not figure.file.endswith(".pdf")
                 else f'<a href="{esc(figure.file)}">{esc(figure.file)}</a>')
        parts += [f"<h3>{number}. {esc(figure.title)}</h3>", "<figure>", image,
                  f"<figcaption>{esc(figure.caption)}{' Also as' + links if links else ''}</figcaption>", "</figure>"]
    for section in doc.sections_after:
        parts += _html_section(section)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_section(section: Section) -> list[str]:
    esc = html.escape
    parts = [f"<h2>{esc(section.title)}</h2>"]
    parts += [f"<p>{_inline_code(esc(paragraph))}</p>" for paragraph in section.paragraphs]
    if section.table is not None and len(section.table):
        parts.append(html_table(section.table))
    if section.code:
        parts.append(f"<pre><code>{esc(section.code)}</code></pre>")
    return parts


def html_table(table: pd.DataFrame) -> str:
    esc = html.escape
    numeric = [_numeric(table[column]) for column in table.columns]
    rows = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in table.columns) + "</tr></thead>",
            "<tbody>"]
    for row in table.itertuples(index=False):
        cells = "".join(f'<td class="number">{esc(str(v))}</td>' if number else f"<td>{esc(str(v))}</td>"
                        for v, number in zip(row, numeric))
        rows.append(f"<tr>{cells}</tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def _numeric(column: pd.Series) -> bool:
    """Numbers, right-aligned: a numeric column, or one of numbers with blanks ('' in a row where it does not apply)."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    values = [value for value in column if value != ""]
    return bool(values) and all(isinstance(value, numbers.Number) for value in values)


def _inline_code(text: str) -> str:
    """Markdown's `code` spans as <code>, the one markup our paragraphs use."""
    pieces = text.split("`")
    return "".join(f"<code>{piece}</code>" if index % 2 else piece for index, piece in enumerate(pieces))
