"""The report's quality section: per method, how well its quality score ranks its predictions
(risk-coverage curve, AURC, e-AURC, normalised AURC, Spearman ρ, failure AUROC) and what abstention
did (coverage, Dice with and without it). The numbers come from each run's ``results.csv`` through
:mod:`salip_bench.evaluation.risk_coverage`, the same functions ``summary.json`` uses."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from salip_bench.evaluation.risk_coverage import (
    ABSTAINED,
    DEFAULT_FAILURE_DICE,
    QUALITY,
    abstention_summary,
    risk_coverage,
    unabstained_dice,
)
from salip_bench.reporting.runs import Run
from salip_bench.storage.files import atomic_write_text

COLUMNS = ["method", "dataset", "n", "coverage", "n_abstained", "dice_mean", "dice_mean_without_abstention",
           "aurc", "e_aurc", "normalised_aurc", "spearman_rho", "spearman_p", "failure_auroc", "n_failures",
           "failure_dice"]
LEGEND = ("Risk = 1 − Dice of what the method predicted (before abstention). AURC: area under the risk-coverage "
          "curve (lower is better); e-AURC: its excess over the perfect ranking; normalised AURC: 0 = random "
          "ranking, 1 = perfect; ρ: Spearman between quality and Dice (p-value); failure AUROC: how well a low "
          "quality flags Dice < failure Dice. Coverage: fraction of predictions kept (not abstained); DSC with "
          "abstention scores an abstained prediction as the empty mask.")


def run_rows(run: Run) -> list[dict] | None:
    """The rows of ``run`` that have a quality (ok samples), as dicts; None: the run records no quality."""
    frame = run.results
    # results.csv has the column for every method of a dataset (one column set): empty = no quality
    if frame is None or QUALITY not in frame.columns or not frame[QUALITY].notna().any():
        return None
    frame = frame[(frame["status"] == "ok") & frame[QUALITY].notna()]
    rows = frame.to_dict("records")
    for row in rows:
        if pd.isna(row.get("dice")):
            row["dice"] = None
        if ABSTAINED in row:
            row[ABSTAINED] = str(row[ABSTAINED]).lower() == "true"
    return rows


def failure_dice_of(run: Run) -> float:
    qc = (run.summary.config or {}).get("qc") or {}
    return float(qc.get("failure_dice", DEFAULT_FAILURE_DICE))


def quality_rows(runs: list[Run], labels: list[str]) -> tuple[pd.DataFrame, dict, list[str]]:
    """Per scored run with a quality: one table row, its curve, and the runs without a quality.

    Returns:
        The table (:data:`COLUMNS`), ``{(label, dataset): (coverage, selective risk)}`` and notes.
    """
    table, curves, notes = [], {}, []
    for run, label in zip(runs, labels):
        rows = run_rows(run)
        if rows is None:
            notes.append(f"{label} ({run.dataset}): no quality score recorded")
            continue
        scored = [r for r in rows if r["dice"] is not None]
        analysis = risk_coverage([r[QUALITY] for r in scored], [unabstained_dice(r) for r in scored],
                                 failure_dice_of(run))
        abstention = abstention_summary(rows)
        table.append({"method": label, "dataset": run.dataset, "n": abstention["n"],
                      "coverage": abstention["coverage"], "n_abstained": abstention["n_abstained"],
                      "dice_mean": abstention["dice_mean"],
                      "dice_mean_without_abstention": abstention["dice_mean_without_abstention"],
                      **{k: analysis[k] for k in COLUMNS[7:]}})
        if analysis["coverage"]:
            curves[(label, run.dataset)] = (analysis["coverage"], analysis["selective_risk"])
    return pd.DataFrame(table, columns=COLUMNS), curves, notes


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def quality_markdown(table: pd.DataFrame, notes: list[str]) -> str:
    """``quality.md``: the table, its legend and the runs without a quality."""
    lines = ["# Quality score and abstention", "",
             "| Method | Dataset | n | Coverage | DSC | DSC w/o abstention | AURC | e-AURC | nAURC | ρ (p) | "
             "Failure AUROC (failures) |", "|" + "---|" * 11]
    for row in table.to_dict("records"):
        rho = f"{_fmt(row['spearman_rho'])} ({_fmt(row['spearman_p'], 3)})"
        lines.append(f"| {row['method']} | {row['dataset']} | {row['n']} | {_fmt(row['coverage'])} | "
                     f"{_fmt(row['dice_mean'])} | {_fmt(row['dice_mean_without_abstention'])} | {_fmt(row['aurc'])} | "
                     f"{_fmt(row['e_aurc'])} | {_fmt(row['normalised_aurc'])} | {rho} | "
                     f"{_fmt(row['failure_auroc'])} ({row['n_failures']} < {row['failure_dice']}) |")
    if not len(table):
        lines.append("| – | – | 0 | – | – | – | – | – | – | – | – |")
    lines += ["", LEGEND, ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plot_risk_coverage(curves: dict, path: Path) -> bool:
    """``risk_coverage.png``: one panel per dataset, one step curve per method; False if nothing to draw."""
    if not curves:
        return False
    datasets = list(dict.fromkeys(d for _, d in curves))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (label, d), (coverage, risk) in curves.items():
            if d == dataset:
                ax.step([0.0, *coverage], [risk[0], *risk], where="pre", label=label)
        ax.set(title=dataset, xlabel="coverage", ylabel="selective risk (1 − Dice)", xlim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_quality(runs: list[Run], labels: list[str], out: Path) -> tuple[str, Path | None]:
    """Write ``quality.md``, ``quality.csv`` and ``risk_coverage.png`` (when some run has a curve).

    Returns:
        The markdown and the figure's path (None: no figure).
    """
    table, curves, notes = quality_rows([r for r in runs if r.scored], [lb for r, lb in zip(runs, labels) if r.scored])
    markdown = quality_markdown(table, notes)
    atomic_write_text(out / "quality.md", markdown)
    atomic_write_text(out / "quality.csv", table.to_csv(index=False))
    figure = out / "risk_coverage.png"
    return markdown, figure if plot_risk_coverage(curves, figure) else None
