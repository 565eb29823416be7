"""Cells and tables of the report's markdown files."""
from __future__ import annotations

import pandas as pd


def cell(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    """``mean±std`` (or ``mean``), ``–`` when there is no value."""
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if std is None or pd.isna(std) else f"{mean:.{digits}f}±{std:.{digits}f}"


def ci_cell(mean: float | None, std: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """``mean±std [low, high]`` (parts left out where missing), ``–`` when there is no value."""
    text = cell(mean, std, digits)
    if text == "–" or low is None or high is None or pd.isna(low) or pd.isna(high):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def p_cell(p: float | None) -> str:
    if p is None or pd.isna(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
