"""``salip-bench-report``: compare finished runs in the shape of the SaLIP paper's Table 1.

Reads every ``summary.json`` (and its ``results.csv``) below the given run directories (a single run
or a Hydra multirun) and writes to ``--out``:

- ``table.md`` / ``table.csv``: rows ROI / dataset / domain, columns method × (DSC with its seeded
  bootstrap 95 % CI and median, mIoU, NSD, HD95) and the paired Wilcoxon test of each method against
  the reference method (``--reference``, default the first SaLIP run) on per-image Dice, Holm-corrected;
- ``dice.png``: the per-image Dice distribution of each method on each dataset;
- ``failures.md`` / ``failures.csv``: for runs that recorded ``oracle_dice`` and ``retrieved_dice``,
  which stage lost each sample (generator, retriever, refinement);
- ``hc.md`` / ``hc.csv``: HC18 head-circumference absolute difference (mm), where recorded;
- ``figures/*.png``: best / median / worst image of each run and all methods side by side;
- ``report.html``: all of it on one self-contained page (images embedded).

Runs on unlabelled images (no Dice) are listed as unscored, with their figures but no scores.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from salip_bench.config_keys import NON_SEMANTIC_KEYS, NON_SEMANTIC_NESTED, SEMANTIC_NESTED
from salip_bench.reporting.clinical import hc_markdown, hc_table
from salip_bench.reporting.failures import CATEGORIES, attribute_failures, failure_table, failures_markdown  # noqa: F401
from salip_bench.reporting.figures import plot_dice
from salip_bench.reporting.html import write_html
from salip_bench.reporting.qualitative import write_figures
from salip_bench.reporting.tables import (ROW_KEYS, TABLE_LEGEND, add_paired_tests, reference_runs, run_notes,
                                          stats_rows, table_entries, table_markdown, table_rows, wide_table)

# Config keys that do not tell methods apart: the dataset is the table's rows, the rest change no
# prediction (the same keys the harness keeps out of its resume fingerprint).
IGNORED_KEYS = ("dataset", "hydra", *NON_SEMANTIC_KEYS)
# Dataset keys that change predictions but neither the images nor the ground truth (the organ's prompt
# set, candidates retrieved per class): they tell runs apart like method settings (paper Tab. 2 compares
# prompt sets on one dataset), but only where they differ on one dataset, not between datasets.
DATASET_SETTINGS = ("dataset.prompts", "dataset.top_k")


class ReportError(Exception):
    """A run directory that cannot be reported on; the message names it."""


@dataclass
class Run:
    """One finished evaluation run: its summary and, when written, its per-sample results."""

    path: Path
    summary: dict
    results: pd.DataFrame | None
    row_roi: str | None = None  # set by find_runs when runs on this dataset used several prompt sets

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or "?")

    @property
    def roi(self) -> str:
        return self.row_roi or str(self.summary.get("roi") or "-")

    @property
    def dataset(self) -> str:
        """The registered dataset name; for the generic ``folder`` and ``volumes`` datasets the root's
        folder name, since "folder" alone would not tell two datasets apart."""
        name = self.summary.get("dataset") or "?"
        root = self.summary.get("dataset_root")
        return Path(str(root)).name if name in ("folder", "volumes") and root else str(name)

    @property
    def scored(self) -> bool:
        """False for a run on unlabelled images: it has predictions but no Dice to report."""
        summary = self.summary
        return not (summary.get("dice_mean") is None and summary.get("dice_3d_mean") is None
                    and (summary.get("n_unlabelled") or 0) > 0)

    @property
    def settings(self) -> dict[str, str]:
        """The flattened config (or, for summaries without one, the overrides) minus ignored keys."""
        config = self.summary.get("config")
        if isinstance(config, dict) and config:
            flat = _flatten(config)
        else:
            pairs = (o.lstrip("+~").split("=", 1) for o in self.summary.get("overrides") or [] if "=" in o)
            flat = {key: value for key, value in pairs}
        return {k: v for k, v in flat.items()
                if (k.split(".")[0] not in IGNORED_KEYS and k not in NON_SEMANTIC_NESTED) or _is_dataset_setting(k)
                or k in SEMANTIC_NESTED}


def _is_dataset_setting(key: str) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in DATASET_SETTINGS)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def find_runs(run_dirs: list[Path]) -> list[Run]:
    """All runs below ``run_dirs`` (each a run or a multirun), once each, in path order."""
    paths: dict[Path, None] = {}
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ReportError(f"{run_dir}: not a directory")
        found = sorted(run_dir.rglob("summary.json"), key=lambda p: _natural_key(p.parent.relative_to(run_dir)))
        if not found:
            raise ReportError(f"{run_dir}: no summary.json in it or below it (is it a salip-bench run directory?)")
        paths.update((p.resolve(), None) for p in found)
    runs = [_load_run(path) for path in paths]
    _share_rows(runs)
    return runs


def _share_rows(runs: list[Run]) -> None:
    """Runs on one dataset are scored against one ground truth, so they share a row even when they
    prompted for it differently (a prompt-set ablation); that row's ROI names every prompt set."""
    for dataset in {run.dataset for run in runs}:
        members = [run for run in runs if run.dataset == dataset]
        rois = list(dict.fromkeys(str(run.summary.get("roi") or "-") for run in members))
        for run in members if len(rois) > 1 else []:
            run.row_roi = " / ".join(rois)


def _natural_key(path: Path) -> list:
    """Multirun job folders 0, 1, ..., 10 in numeric rather than string order."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _load_run(summary_path: Path) -> Run:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{summary_path}: unreadable summary ({err})") from err
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_path}: not a JSON object")
    results_path = summary_path.parent / "results.csv"
    results = None
    if results_path.is_file():
        try:
            results = pd.read_csv(results_path, dtype={"id": str, "domain": str, "volume": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ReportError(f"{results_path}: unreadable results ({err})") from err
    return Run(summary_path.parent, summary, results)


def method_labels(runs: list[Run]) -> list[str]:
    """``summary["method"]``, plus the settings that differ between runs of that method.

    Shortest first: a stage whose plugin differs shows as ``retriever=box``; only if that leaves
    two runs of one dataset with one label do all differing keys appear, and then the run folder.
    """
    labels = [""] * len(runs)
    for method in dict.fromkeys(run.method for run in runs):
        members = [i for i, run in enumerate(runs) if run.method == method]
        flats = [runs[i].settings for i in members]
        differing = sorted(k for k in set().union(*flats) if len({f.get(k) for f in flats}) > 1
                           and (not _is_dataset_setting(k) or _differs_on_a_dataset(k, [runs[i] for i in members])))
        renamed = {k.rsplit(".", 1)[0] for k in differing if k.endswith(".name")}
        short = [k for k in differing if k.endswith(".name") or k.split(".")[0] not in renamed]
        for keys in (short, differing, None):
            candidates = [_label(method, f, keys) if keys is not None
                          else f"{_label(method, f, differing)} [{runs[i].path}]" for i, f in zip(members, flats)]
            rows = [(runs[i].roi, runs[i].dataset, label) for i, label in zip(members, candidates)]
            if len(set(rows)) == len(rows):
                break
        for i, label in zip(members, candidates):
            labels[i] = label
    return labels


def _differs_on_a_dataset(key: str, runs: list[Run]) -> bool:
    pairs = {(run.dataset, run.settings.get(key)) for run in runs}
    return len(pairs) > len({dataset for dataset, _ in pairs})


def _label(method: str, settings: dict[str, str], keys: list[str]) -> str:
    if not keys:
        return method
    shown = _short_keys(keys)
    # A run without model@refiner_model refines with its model's engine: the label names it.
    defaults = {"refiner_model.name": settings.get("model.name", "-")}
    parts = [f"{shown[k]}={settings.get(k, defaults.get(k, '-'))}" for k in keys]
    return f"{method} ({', '.join(parts)})"


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key by its shortest dotted suffix that no other key ends with (``retriever.name`` →
    ``retriever``, ``generator.points_per_side`` → ``points_per_side``): labels stay readable."""
    paths = {k: k.removesuffix(".name").split(".") for k in keys}
    shown = {}
    for key, parts in paths.items():
        for n in range(1, len(parts) + 1):
            suffix = parts[-n:]
            if not any(other[-n:] == suffix for k, other in paths.items() if k != key):
                break
        shown[key] = ".".join(suffix)
    return shown


def write_report(run_dirs: list[Path], out: Path, tau: float = 0.5, delta: float = 0.05,
                 reference: str | None = None, seed: int = 0) -> str:
    """Write all report files to ``out``; returns the markdown table."""
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
    table = table_markdown(wide, methods, runs, labels, references)
    (out / "table.md").write_text(table)
    wide.to_csv(out / "table.csv", index=False)
    failures = failure_table(runs, labels, tau, delta)
    failures.to_csv(out / "failures.csv", index=False)
    (out / "failures.md").write_text(failures_markdown(failures, runs, labels, tau, delta))
    hc = hc_table(runs, labels)
    if len(hc):
        hc.to_csv(out / "hc.csv", index=False)
        (out / "hc.md").write_text(hc_markdown(hc))
    plot_dice([r for r in runs if r.scored], [lb for r, lb in zip(runs, labels) if r.scored], out / "dice.png")
    figures, figure_notes = write_figures(runs, labels, references, out / "figures")
    tables = [table_rows(wide, methods), stats_rows(wide, methods)] if len(wide) else []
    write_html(out / "report.html", tables, [TABLE_LEGEND, *run_notes(runs, labels, references)], out / "dice.png",
               figures, figure_notes, failures_markdown(failures, runs, labels, tau, delta), hc,
               [(lb, r) for r, lb in zip(runs, labels) if not r.scored])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="salip-bench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a run's output directory or a multirun directory (searched for summary.json)")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT", help="folder to write the report to")
    parser.add_argument("--tau", type=float, default=0.5, help="Dice a stage must reach to count as a hit (0.5)")
    parser.add_argument("--delta", type=float, default=0.05,
                        help="Dice lost in refinement that counts as a refinement loss (0.05)")
    parser.add_argument("--reference", metavar="NAME", default=None,
                        help="method (or method label) the paired tests compare against (default: the first salip run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (0)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.tau <= 1.0 or args.delta < 0.0:
        parser.error("--tau must lie in [0, 1] and --delta be >= 0")
    try:
        table = write_report(args.run_dirs, args.out, args.tau, args.delta, args.reference, args.seed)
    except ReportError as err:
        parser.error(str(err))
    sys.stdout.write(table)
    print(f"report written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
