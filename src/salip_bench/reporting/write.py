"""Writing a whole report: every table, plot and page of ``salip-bench-report`` into one folder
(see :mod:`salip_bench.report` for what each file holds)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from salip_bench.reporting.clinical import hc_markdown, hc_table
from salip_bench.reporting.failures import failure_table, failures_markdown
from salip_bench.reporting.figures import plot_dice
from salip_bench.reporting.html import write_html
from salip_bench.reporting.labels import method_labels
from salip_bench.reporting.qualitative import write_figures
from salip_bench.reporting.quality import write_quality
from salip_bench.reporting.runs import ReportError, find_runs
from salip_bench.reporting.tables import (
    ROW_KEYS,
    add_paired_tests,
    reference_runs,
    run_notes,
    stats_rows,
    table_entries,
    table_legend,
    table_markdown,
    table_rows,
    wide_table,
)
from salip_bench.storage.files import atomic_write_text


def write_report(run_dirs: list[Path], out: Path, tau: float = 0.5, delta: float = 0.05,
                 reference: str | None = None, seed: int = 0) -> str:
    """Write all report files to ``out``; returns the markdown table.

    Args:
        run_dirs: run or multirun directories (searched for summary.json).
        out: the report folder (created).
        tau: Dice a stage must reach to count as a hit; delta: Dice lost in refinement that counts as a loss.
        reference: method or label the paired tests compare against (default: the first salip run).
        seed: seed of the bootstrap confidence intervals.
    """
    runs = find_runs(run_dirs)
    labels = method_labels(runs)
    methods = list(dict.fromkeys(label for run, label in zip(runs, labels) if run.scored))
    try:
        references = reference_runs(runs, labels, reference)
    except ValueError as err:
        raise ReportError(str(err)) from err
    entries = table_entries(runs, labels, seed)
    wide = wide_table(add_paired_tests(entries, runs, labels, references), methods) if len(entries) \
        else pd.DataFrame(columns=ROW_KEYS)
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(wide, methods, runs, labels, references, seed)
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "table.csv", wide.to_csv(index=False))
    failures = failure_table(runs, labels, tau, delta)
    atomic_write_text(out / "failures.csv", failures.to_csv(index=False))
    failures_md = failures_markdown(failures, runs, labels, tau, delta)
    atomic_write_text(out / "failures.md", failures_md)
    hc = hc_table(runs, labels)
    if len(hc):
        atomic_write_text(out / "hc.csv", hc.to_csv(index=False))
        atomic_write_text(out / "hc.md", hc_markdown(hc))
    plot_dice([r for r in runs if r.scored], [lb for r, lb in zip(runs, labels) if r.scored], out / "dice.png")
    figures, figure_notes = write_figures(runs, labels, references, out / "figures")
    tables = [table_rows(wide, methods), stats_rows(wide, methods)] if len(wide) else []
    quality = write_quality(runs, labels, out)  # quality.md / .csv, risk_coverage.png
    write_html(out / "report.html", tables, [table_legend(seed), *run_notes(runs, labels, references)],
               out / "dice.png",
               figures, figure_notes, failures_md, hc, [(lb, r) for r, lb in zip(runs, labels) if not r.scored],
               quality=quality)
    return table
