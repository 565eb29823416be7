"""Finding finished runs below the report's run directories and reading each one's summary.json and
results.csv (through :mod:`salip_bench.evaluation.schema`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from salip_bench.evaluation.schema import Summary
from salip_bench.reporting.labels import run_settings


class ReportError(Exception):
    """A run directory that cannot be reported on; the message names it."""


@dataclass
class Run:
    """One finished evaluation run: its summary and, when written, its per-sample results.

    Args:
        path: the run's output directory.
        summary: its summary.json.
        results: its results.csv, or None when it wrote none.
        row_roi: the table row's ROI, set by :func:`find_runs` when runs on this dataset used several prompt sets.
    """

    path: Path
    summary: Summary
    results: pd.DataFrame | None
    row_roi: str | None = None

    @property
    def method(self) -> str:
        return str(self.summary.method or "?")

    @property
    def own_roi(self) -> str:
        """The prompt set this run used."""
        return str(self.summary.roi or "-")

    @property
    def roi(self) -> str:
        return self.row_roi or self.own_roi

    @property
    def dataset(self) -> str:
        """The registered dataset name; for the generic ``folder`` and ``volumes`` datasets the root's
        folder name, since "folder" alone would not tell two datasets apart."""
        name = self.summary.dataset or "?"
        root = self.summary.dataset_root
        return Path(str(root)).name if name in ("folder", "volumes") and root else str(name)

    @property
    def scored(self) -> bool:
        """False for a run on unlabelled images: it has predictions but no Dice to report."""
        return self.summary.scored

    @property
    def settings(self) -> dict[str, str]:
        """The settings that tell this run apart from others (see :func:`~salip_bench.reporting.labels.run_settings`)."""
        return run_settings(self.summary)


def find_runs(run_dirs: list[Path]) -> list[Run]:
    """All runs below ``run_dirs`` (each a run or a multirun), once each, in path order.

    Args:
        run_dirs: run or multirun output directories.
    """
    paths: dict[Path, None] = {}
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ReportError(f"{run_dir}: not a directory")
        found = sorted(run_dir.rglob("summary.json"), key=lambda p: _natural_key(p.parent.relative_to(run_dir)))
        if not found:
            raise ReportError(f"{run_dir}: no summary.json in it or below it (is it a salip-bench run directory?)")
        paths.update((p.resolve(), None) for p in found)
    runs = [load_run(path) for path in paths]
    _share_rows(runs)
    return runs


def _share_rows(runs: list[Run]) -> None:
    """Runs on one dataset are scored against one ground truth, so they share a row even when they
    prompted for it differently (a prompt-set ablation); that row's ROI names every prompt set."""
    for dataset in {run.dataset for run in runs}:
        members = [run for run in runs if run.dataset == dataset]
        rois = list(dict.fromkeys(run.own_roi for run in members))
        for run in members if len(rois) > 1 else []:
            run.row_roi = " / ".join(rois)


def _natural_key(path: Path) -> list:
    """Multirun job folders 0, 1, ..., 10 in numeric rather than string order."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def load_run(summary_path: Path) -> Run:
    """The run whose summary.json is ``summary_path`` (with its results.csv, when there is one)."""
    try:
        summary = Summary.from_json(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{summary_path}: unreadable summary ({err})") from err
    except ValueError as err:  # valid JSON, but not a summary
        raise ReportError(f"{summary_path}: {err}") from err
    results_path = summary_path.parent / "results.csv"
    results = None
    if results_path.is_file():
        try:
            results = pd.read_csv(results_path, dtype={"id": str, "domain": str, "volume": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ReportError(f"{results_path}: unreadable results ({err})") from err
    return Run(summary_path.parent, summary, results)
