"""Finding finished runs below the report's run directories and reading each one's summary.json and
results.csv (through :mod:`salip_bench.evaluation.schema`)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from salip_bench.evaluation.schema import INTEGER_COLUMNS, Summary
from salip_bench.reporting.labels import run_settings

log = logging.getLogger(__name__)


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
        """The settings that tell this run apart from others
        (see :func:`~salip_bench.reporting.labels.run_settings`)."""
        return run_settings(self.summary)


def find_runs(run_dirs: list[Path]) -> list[Run]:
    """All readable runs below ``run_dirs`` (each a run or a multirun), once each, in path order. A run
    that cannot be read (unreadable or foreign summary.json or results.csv, a folder with records but no
    summary.json) is skipped with one warning line naming it; the rest are reported.

    Args:
        run_dirs: run or multirun output directories.

    Raises:
        ReportError: a path that is not a directory, one without any run, or no readable run at all.
    """
    paths: dict[Path, None] = {}
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ReportError(f"{run_dir}: not a directory")
        found = sorted(run_dir.rglob("summary.json"), key=lambda p: _natural_key(p.parent.relative_to(run_dir)))
        for folder in sorted({p.parent for p in (*run_dir.rglob("results.csv"), *run_dir.rglob("samples"))}):
            if not (folder / "summary.json").is_file():
                log.warning("skipping %s: no summary.json (a run that never wrote its tables: run it again to "
                            "resume and write them)", folder)
        if not found:
            raise ReportError(f"{run_dir}: no summary.json in it or below it (is it a salip-bench run directory?)")
        paths.update((p.resolve(), None) for p in found)
    runs = []
    for path in paths:
        try:
            runs.append(load_run(path))
        except ReportError as err:
            log.warning("skipping %s: %s", path.parent, err)
    if not runs:
        raise ReportError(f"no readable run in {', '.join(str(d) for d in run_dirs)}")
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{summary_path}: unreadable summary ({err})") from err
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # valid JSON, but not a summary
        raise ReportError(f"{summary_path}: not a salip-bench summary ({type(err).__name__}: {err})") from err
    results_path = summary_path.parent / "results.csv"
    results = None
    if results_path.is_file():
        try:
            results = read_results(results_path)
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ReportError(f"{results_path}: unreadable results ({err})") from err
    return Run(summary_path.parent, summary, results)


def read_results(path: Path) -> pd.DataFrame:
    """A results.csv as written: ids, domains and volumes as text, integer columns as ``Int64`` (every
    column whose written values are all integers, and :data:`INTEGER_COLUMNS` when empty), so that
    counts stay integers where failed samples leave gaps.

    Args:
        path: the results.csv.

    Raises:
        OSError, pandas.errors.ParserError, pandas.errors.EmptyDataError: unreadable.
        ValueError: not a results table (no ``id`` / ``status`` column).
    """
    frame = pd.read_csv(path, dtype={"id": str, "domain": str, "volume": str})
    missing = [c for c in ("id", "status") if c not in frame.columns]
    if missing:
        raise ValueError(f"not a results table (no {', '.join(missing)} column)")
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in frame.columns:
        written = text[column][text[column] != ""]
        if column in INTEGER_COLUMNS and not len(written) or \
                (len(written) and pd.api.types.is_numeric_dtype(frame[column])
                 and not pd.api.types.is_bool_dtype(frame[column]) and written.str.fullmatch(r"-?\d+").all()):
            frame[column] = pd.array([None if pd.isna(v) else int(v) for v in frame[column]], dtype="Int64")
    return frame
