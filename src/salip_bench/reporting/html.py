"""``report.html``: the whole report on one self-contained page (every image embedded as base64),
which opens offline in any browser."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from salip_bench.reporting.clinical import hc_rows
from salip_bench.storage.files import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1600px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ccc; }
.note { color: #555; font-size: 0.9em; }
.unscored { color: #a40; }
.wide { overflow-x: auto; }
"""


def embed_png(path: Path, alt: str) -> str:
    """An ``<img>`` carrying the PNG itself (a data URI), so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_html(text: str) -> str:
    """The report's own markdown (headings, pipe tables, bullet lists, paragraphs) as HTML."""
    parts: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            parts.append(table_html(block[0], [r for r in block[2:]]))
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{html.escape(lines[i][2:])}</li>")
                i += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            parts.append(f'<p class="note">{html.escape(line)}</p>')
        i += 1
    return "\n".join(parts)


def write_html(path: Path, tables: list[tuple[list[str], list[list[str]]]], notes: list[str], dice_png: Path,
               figures: list[tuple[str, Path]], figure_notes: list[str], failures_md: str, hc: pd.DataFrame,
               unscored: list[tuple[str, object]], quality: tuple[str, Path | None] | None = None) -> None:
    """Write the page.

    Args:
        path: ``REP/report.html``.
        tables: header and rows of the main table and of the statistics (none when no run is scored).
        notes: the table's legend and one line per run.
        dice_png: the per-image Dice plot.
        figures: (caption, PNG) of the qualitative figures.
        figure_notes: why some figures were skipped.
        failures_md: the failure attribution, as written to failures.md.
        hc: the head-circumference table (may be empty).
        unscored: (label, run) of runs on unlabelled images.
        quality: the quality section's markdown and risk-coverage figure (``reporting/quality.py``), or None.
    """
    body = ["<h1>salip-bench report</h1>", "<h2>Scores</h2>"]
    if tables:
        body.append(f'<div class="wide">{table_html(*tables[0], css_class="scores")}</div>')
        for extra in tables[1:]:
            body += ["<h2>Statistics</h2>", f'<div class="wide">{table_html(*extra, css_class="stats")}</div>']
    else:
        body.append("<p>No run has scores.</p>")
    body.append(markdown_html("\n".join(notes)))
    if unscored:
        body.append("<h2>Unscored runs (unlabelled images)</h2>")
        rows = [[label, run.dataset, str(run.summary.stats.n_ok), str(run.summary.stats.n_unlabelled),
                 str(run.path)] for label, run in unscored]
        body.append(table_html(["Method", "Dataset", "ok", "unlabelled", "Run"], rows, css_class="unscored"))
    if dice_png.is_file():
        body += ["<h2>Dice per image</h2>", f"<figure>{embed_png(dice_png, 'Dice per image')}</figure>"]
    body.append("<h2>Qualitative results</h2>")
    body.append('<p class="note">Green: ground-truth outline · red: predicted outline · yellow dashed: the '
                "boxes the method prompted SAM with · Dice in the corner.</p>")
    for caption, png in figures:
        body.append(f"<figure>{embed_png(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    if figure_notes:
        body.append(markdown_html("\n".join(f"- {n}" for n in figure_notes)))
    if len(hc):
        body += ["<h2>Head circumference (HC18)</h2>", table_html(*hc_rows(hc), css_class="hc"),
                 '<p class="note">Absolute difference to the reference circumference in mm, mean ± sd.</p>']
    body += ["<h2>Failure attribution</h2>", markdown_html(failures_md.replace("# Failure attribution", "", 1))]
    if quality is not None:
        body += ["<h2>Quality score and abstention</h2>",
                 markdown_html(quality[0].replace("# Quality score and abstention", "", 1))]
        if quality[1] is not None:
            body.append(f"<figure>{embed_png(quality[1], 'Risk-coverage curves')}</figure>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>salip-bench report</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write_text(path, page)  # UTF-8, as the page's <meta charset> says
