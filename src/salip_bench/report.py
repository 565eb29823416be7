"""``salip-bench-report``: compare finished runs in the shape of the SaLIP paper's Table 1.

Reads every ``summary.json`` (and its ``results.csv``) below the given run directories (a single run
or a Hydra multirun) and writes to ``--out``:

- ``table.md`` / ``table.csv``: rows ROI / dataset / domain, columns method × (DSC, mIoU);
- ``dice.png``: the per-image Dice distribution of each method on each dataset;
- ``failures.md`` / ``failures.csv``: for runs that recorded ``oracle_dice`` and ``retrieved_dice``,
  which stage lost each sample (generator, retriever, refinement).

Only json/pandas/matplotlib are imported: the harness pulls in torch, which a report does not need.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from salip_bench.config_keys import NON_SEMANTIC_KEYS, NON_SEMANTIC_NESTED, SEMANTIC_NESTED

# Config keys that do not tell methods apart: the dataset is the table's rows, the rest change no
# prediction (the same keys the harness keeps out of its resume fingerprint).
IGNORED_KEYS = ("dataset", "hydra", *NON_SEMANTIC_KEYS)
# Dataset keys that change predictions but neither the images nor the ground truth (the organ's prompt
# set, candidates retrieved per class): they tell runs apart like method settings (paper Tab. 2 compares
# prompt sets on one dataset), but only where they differ on one dataset, not between datasets.
DATASET_SETTINGS = ("dataset.prompts", "dataset.top_k")
ROW_KEYS = ["roi", "dataset", "domain", "level"]
CATEGORIES = ["generator_miss", "retriever_miss", "refinement_loss", "ok", "failed", "unscored"]


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
        """The registered dataset name; for the generic ``folder`` dataset the root's folder name,
        since "folder" alone would not tell two datasets apart."""
        name = self.summary.get("dataset") or "?"
        root = self.summary.get("dataset_root")
        return Path(str(root)).name if name == "folder" and root else str(name)

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


def table_entries(runs: list[Run], labels: list[str]) -> pd.DataFrame:
    """Long form of the table: one row per run × domain, with mean/std of DSC and mIoU.

    Datasets of volumes (``per_volume`` in the summary) are scored by 3D Dice per volume, as the
    paper does; 2D datasets by per-image Dice. ``level`` says which.
    """
    entries = []
    for run, label in zip(runs, labels):
        summary = run.summary
        volumes = list((summary.get("per_volume") or {}).values())
        domains = summary.get("per_domain") or {}
        scopes = [(str(d), stats, [v for v in volumes if v.get("domain") == d]) for d, stats in domains.items()]
        if len(domains) != 1:  # one domain: its row already is the whole dataset
            scopes.append(("all", summary, volumes))
        for domain, stats, scope_volumes in scopes:
            entry = {"roi": run.roi, "dataset": run.dataset, "domain": domain, "method": label,
                     "n_ok": stats.get("n_ok"), "n_failed": stats.get("n_failed"), "n_total": stats.get("n_total")}
            if volumes:
                entry["level"] = "volume"
                for metric, key in (("dsc", "dice_3d"), ("miou", "iou_3d")):
                    values = [v[key] for v in scope_volumes if v.get(key) is not None]
                    entry[f"{metric}_mean"] = float(np.mean(values)) if values else None
                    entry[f"{metric}_std"] = float(np.std(values)) if values else None
            else:
                entry["level"] = "image"
                for metric, key in (("dsc", "dice"), ("miou", "iou")):
                    entry[f"{metric}_mean"] = stats.get(f"{key}_mean")
                    entry[f"{metric}_std"] = stats.get(f"{key}_std")
            entries.append(entry)
    return pd.DataFrame(entries)


def _row_order(frame: pd.DataFrame) -> pd.DataFrame:
    """ROI, dataset, then domains alphabetically with the whole-dataset row last."""
    order = frame.assign(_all=frame["domain"] == "all")
    return order.sort_values(["roi", "dataset", "_all", "domain", "level"], kind="stable").drop(columns="_all")


def wide_table(entries: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """The Table 1 shape with numbers: per method ``DSC mean``, ``DSC std``, ``mIoU mean``, ...."""
    rows = _row_order(entries[ROW_KEYS].drop_duplicates())
    indexed = entries.set_index(ROW_KEYS + ["method"])
    for method in methods:
        for metric, name in (("dsc", "DSC"), ("miou", "mIoU")):
            for stat in ("mean", "std"):
                rows[f"{method} {name} {stat}"] = [indexed[f"{metric}_{stat}"].get((*key, method))
                                                   for key in rows[ROW_KEYS].itertuples(index=False)]
        rows[f"{method} n_failed"] = [indexed["n_failed"].get((*key, method))
                                      for key in rows[ROW_KEYS].itertuples(index=False)]
    return rows.reset_index(drop=True)


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.3f}" if std is None or pd.isna(std) else f"{mean:.3f}±{std:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def table_markdown(wide: pd.DataFrame, methods: list[str], runs: list[Run], labels: list[str]) -> str:
    header = ["ROI", "Dataset", "Domain"] + [f"{m} {name}" for m in methods for name in ("DSC", "mIoU")]
    rows = []
    for record in wide.to_dict("records"):
        domain = record["domain"] + (" (3D)" if record["level"] == "volume" else "")
        cells = [_cell(record[f"{m} {name} mean"], record[f"{m} {name} std"]) for m in methods for name in ("DSC", "mIoU")]
        rows.append([record["roi"], record["dataset"], domain] + cells)
    notes = ["", "DSC / mIoU: mean±std over images; rows marked (3D) over volumes (3D Dice of the stacked slices). "
             "Failed samples are left out of the means."]
    for run, label in zip(runs, labels):
        summary = run.summary
        failed = f", {summary.get('n_failed')} failed" if summary.get("n_failed") else ""
        notes.append(f"- {label} on {run.dataset}: {run.path} ({summary.get('n_ok')}/{summary.get('n_total')} ok{failed})")
    return markdown_table(header, rows) + "\n".join(notes) + "\n"


def attribute_failures(results: pd.DataFrame, tau: float, delta: float) -> pd.Series:
    """The stage that lost each sample: ``generator_miss`` (no kept candidates reach ``tau``),
    ``retriever_miss`` (they do, the retrieved ones do not), ``refinement_loss`` (refinement cost
    more than ``delta`` Dice), ``ok``, ``failed`` (the sample raised) or ``unscored`` (no stage scores)."""
    failed = results["status"].astype(str) != "ok"
    oracle, retrieved, final = (pd.to_numeric(results[c], errors="coerce")
                                for c in ("oracle_dice", "retrieved_dice", "dice"))
    conditions = [failed, oracle.isna() | retrieved.isna() | final.isna(), oracle < tau, retrieved < tau,
                  final < retrieved - delta]
    choices = ["failed", "unscored", "generator_miss", "retriever_miss", "refinement_loss"]  # first true wins
    return pd.Series(np.select(conditions, choices, default="ok"), index=results.index)


def failure_table(runs: list[Run], labels: list[str], tau: float, delta: float) -> pd.DataFrame:
    """Per run (dataset × method) the count of each category and the mean Dice after each stage."""
    rows = []
    for run, label in zip(runs, labels):
        results = run.results
        if results is None or not {"oracle_dice", "retrieved_dice"} <= set(results.columns):
            continue
        categories = attribute_failures(results, tau, delta)
        scored = results[~categories.isin(["failed", "unscored"])]
        row = {"roi": run.roi, "dataset": run.dataset, "method": label, "n": len(results)}
        row.update({c: int((categories == c).sum()) for c in CATEGORIES})
        for column in ("oracle_dice", "retrieved_dice", "dice"):
            values = pd.to_numeric(scored[column], errors="coerce")
            row[f"{column}_mean"] = float(values.mean()) if len(values) else None
        rows.append(row)
    columns = ["roi", "dataset", "method", "n", *CATEGORIES, "oracle_dice_mean", "retrieved_dice_mean", "dice_mean"]
    return pd.DataFrame(rows, columns=columns)


def failures_markdown(table: pd.DataFrame, runs: list[Run], labels: list[str], tau: float, delta: float) -> str:
    text = [f"# Failure attribution (τ = {tau}, δ = {delta})", "",
            "generator miss: oracle Dice < τ · retriever miss: oracle ≥ τ, retrieved < τ · refinement loss: "
            "retrieved ≥ τ, final < retrieved − δ · failed: the sample raised · unscored: no stage scores", ""]
    if table.empty:
        text.append("No run recorded oracle_dice and retrieved_dice (only SaLIP-like methods do).")
    else:
        shown = [c for c in CATEGORIES if c != "unscored" or table[c].any()]
        header = ["ROI", "Dataset", "Method", "n", *(c.replace("_", " ") for c in shown),
                  "oracle / retrieved / final Dice"]
        rows = []
        for record in table.sort_values(["roi", "dataset"], kind="stable").to_dict("records"):
            counts = [f"{record[c]} ({100 * record[c] / record['n']:.0f}%)" if record["n"] else "0" for c in shown]
            dice = " / ".join(_cell(record[f"{c}_mean"], None) for c in ("oracle_dice", "retrieved_dice", "dice"))
            rows.append([record["roi"], record["dataset"], record["method"], str(record["n"]), *counts, dice])
        text.append(markdown_table(header, rows).rstrip("\n"))
    attributed = set(zip(table["roi"], table["dataset"], table["method"]))
    skipped = [f"- {label} on {run.dataset} ({run.path})" for run, label in zip(runs, labels)
               if (run.roi, run.dataset, label) not in attributed]
    if skipped:
        text += ["", "Not attributable (no results.csv with oracle_dice and retrieved_dice):", *skipped]
    return "\n".join(text) + "\n"


def plot_dice(runs: list[Run], labels: list[str], path: Path) -> None:
    """Per dataset one panel; per method a box plot of per-image Dice with the images as points."""
    import matplotlib

    matplotlib.use("Agg")  # a report is written headless (batch jobs, CI): never open a window
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[tuple[str, np.ndarray, int]]] = {}
    for run, label in zip(runs, labels):
        results = run.results
        if results is None or "dice" not in results.columns:
            values, n_failed = np.array([]), int(run.summary.get("n_failed") or 0)
        else:
            ok = results["status"].astype(str) == "ok"
            values = pd.to_numeric(results.loc[ok, "dice"], errors="coerce").dropna().to_numpy()
            n_failed = int((~ok).sum())
        panels.setdefault((run.roi, run.dataset), []).append((label, values, n_failed))
    methods = list(dict.fromkeys(labels))
    n_methods = max(len(series) for series in panels.values())
    figure, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.6 * n_methods + 2), 3.6 * len(panels)),
                                squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
    for axis, ((roi, dataset), series) in zip(axes[:, 0], sorted(panels.items())):
        data = [values for _, values, _ in series]
        positions = np.arange(1, len(series) + 1)
        if any(len(v) for v in data):
            axis.boxplot([v if len(v) else [np.nan] for v in data], positions=positions, widths=0.5, showfliers=False)
        for position, values, (label, _, _) in zip(positions, data, series):
            colour = f"C{methods.index(label) % 10}"  # one colour per method across panels
            axis.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=8, alpha=0.5, color=colour)
        axis.set_xticks(positions, [textwrap.fill(label, 30) + f"\nn={len(v)}" + (f", {nf} failed" if nf else "")
                                    for label, v, nf in series], fontsize=8)
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel("Dice per image")
        axis.set_title(f"{dataset} ({roi})")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(run_dirs: list[Path], out: Path, tau: float = 0.5, delta: float = 0.05) -> str:
    """Write all report files to ``out``; returns the markdown table."""
    runs = find_runs(run_dirs)
    labels = method_labels(runs)
    methods = list(dict.fromkeys(labels))
    entries = table_entries(runs, labels)
    wide = wide_table(entries, methods)
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(wide, methods, runs, labels)
    (out / "table.md").write_text(table)
    wide.to_csv(out / "table.csv", index=False)
    failures = failure_table(runs, labels, tau, delta)
    failures.to_csv(out / "failures.csv", index=False)
    (out / "failures.md").write_text(failures_markdown(failures, runs, labels, tau, delta))
    plot_dice(runs, labels, out / "dice.png")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="salip-bench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a run's output directory or a multirun directory (searched for summary.json)")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT", help="folder to write the report to")
    parser.add_argument("--tau", type=float, default=0.5, help="Dice a stage must reach to count as a hit (0.5)")
    parser.add_argument("--delta", type=float, default=0.05,
                        help="Dice lost in refinement that counts as a refinement loss (0.05)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.tau <= 1.0 or args.delta < 0.0:
        parser.error("--tau must lie in [0, 1] and --delta be >= 0")
    try:
        table = write_report(args.run_dirs, args.out, args.tau, args.delta)
    except ReportError as err:
        parser.error(str(err))
    sys.stdout.write(table)
    print(f"report written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
