"""The report's main table: per ROI / dataset / domain and method, DSC with its bootstrap 95 % CI and
median, mIoU, NSD, HD95, and the paired test against the reference method."""
from __future__ import annotations

import numpy as np
import pandas as pd

from salip_bench.evaluation.schema import BOUNDARY_METRICS, METRICS, VOLUME_METRICS, Stats
from salip_bench.reporting.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci, paired_tests
from salip_bench.reporting.text import cell as _cell
from salip_bench.reporting.text import ci_cell, markdown_table, p_cell

ROW_KEYS = ["roi", "dataset", "domain", "level"]
# The table's name of each of schema.METRICS (and of its 3D counterpart in VOLUME_METRICS).
COLUMN_METRICS = ("dsc", "miou", "nsd", "hd95")


def _scope_results(run, domain: str) -> pd.DataFrame | None:
    """The run's per-image results in one domain (``all``: every image)."""
    results = run.results
    if results is not None and domain.startswith(ORGAN_SCOPE) and "organ" in results.columns:
        return results[results["organ"].astype(str) == domain[len(ORGAN_SCOPE):]]
    if results is None or domain == "all" or "domain" not in results.columns:
        return results
    return results[results["domain"].astype(str) == domain]


ORGAN_SCOPE = "organ: "  # rows per organ of a multi-organ run (dataset.organs)


def organ_scopes(summary) -> list[tuple]:
    """(scope, stats, volumes) per organ of a run with ``per_organ`` in its summary."""
    per_volume = summary.per_volume or {}
    return [(f"{ORGAN_SCOPE}{organ}", Stats.from_dict(entry),
             [v for key, v in per_volume.items() if key.endswith(f"/{organ}")])
            for organ, entry in (summary.extra.get("per_organ") or {}).items()]


def _image_dice(results: pd.DataFrame | None) -> np.ndarray:
    if results is None or "dice" not in results.columns:
        return np.array([])
    ok = results["status"].astype(str) == "ok"
    return pd.to_numeric(results.loc[ok, "dice"], errors="coerce").dropna().to_numpy()


def table_entries(runs: list, labels: list[str], seed: int = 0) -> pd.DataFrame:
    """Long form of the table: one row per scored run × domain, with mean/std/median and the
    bootstrap 95 % CI of DSC, mean/std of mIoU, means of NSD and HD95 (and how many were undefined).

    Datasets of volumes (``per_volume`` in the summary) are scored by 3D Dice per volume, as the
    paper does (NSD / HD95 in 3D, mm); 2D datasets by per-image scores. ``level`` says which.
    """
    entries = []
    for run, label in zip(runs, labels):
        if not run.scored:
            continue
        summary = run.summary
        volumes = list((summary.per_volume or {}).values())
        domains = summary.per_domain or {}
        scopes = [(str(d), stats, [v for v in volumes if v.domain == d]) for d, stats in domains.items()]
        if len(domains) != 1:  # one domain: its row already is the whole dataset
            scopes.append(("all", summary.stats, volumes))
        scopes += organ_scopes(summary)
        for domain, stats, scope_volumes in scopes:
            entry = {"roi": run.roi, "dataset": run.dataset, "domain": domain, "method": label,
                     "n_ok": stats.n_ok, "n_failed": stats.n_failed, "n_total": stats.n_total}
            if volumes:
                entry["level"] = "volume"
                for metric, key in zip(COLUMN_METRICS, VOLUME_METRICS):
                    values = [v.value(key) for v in scope_volumes if v.value(key) is not None]
                    entry[f"{metric}_mean"] = float(np.mean(values)) if values else None
                    entry[f"{metric}_std"] = float(np.std(values)) if values else None
                    if key in ("nsd_3d", "hd95_3d"):
                        entry[f"{metric}_n_undefined"] = sum(1 for v in scope_volumes if v.undefined(key))
                dice = np.array([v.dice_3d for v in scope_volumes if v.dice_3d is not None])
            else:
                entry["level"] = "image"
                for metric, key in zip(COLUMN_METRICS, METRICS):
                    entry[f"{metric}_mean"] = stats.value(key, "mean")
                    entry[f"{metric}_std"] = stats.value(key, "std")
                    if key in BOUNDARY_METRICS:
                        entry[f"{metric}_n_undefined"] = stats.n_undefined.get(key)
                dice = _image_dice(_scope_results(run, domain))
            entry["dsc_median"] = float(np.median(dice)) if dice.size else None
            entry["dsc_ci_low"], entry["dsc_ci_high"] = bootstrap_ci(dice, seed=seed)
            entry["n_scored"] = int(dice.size)
            entries.append(entry)
    return pd.DataFrame(entries)


def reference_runs(runs: list, labels: list[str], reference: str | None) -> dict[str, int]:
    """Per dataset the index of the run the others are tested against: the first run whose label
    or method is ``reference`` (default: the first SaLIP run; failing that the first run)."""
    chosen: dict[str, int] = {}
    for dataset in dict.fromkeys(run.dataset for run in runs):
        members = [i for i, run in enumerate(runs) if run.dataset == dataset and run.scored]
        if not members:
            continue
        if reference is not None:
            matches = [i for i in members if reference in (labels[i], runs[i].method)]
        else:
            matches = [i for i in members if runs[i].method == "salip"] or members
        if matches:
            chosen[dataset] = matches[0]
    if reference is not None and not chosen:
        raise ValueError(f"--reference {reference}: no scored run has that method or label "
                          f"(runs: {', '.join(dict.fromkeys(labels))})")
    return chosen


def add_paired_tests(entries: pd.DataFrame, runs: list, labels: list[str], references: dict[str, int]) -> pd.DataFrame:
    """Wilcoxon signed-rank p (raw and Holm-corrected over the methods of one row) and n of paired
    images of every run against its dataset's reference run, on per-image Dice."""
    columns = {"vs": None, "n_paired": None, "mean_diff": None, "p_wilcoxon": None, "p_holm": None}
    entries = entries.assign(**columns).astype({c: object for c in columns})
    by_label = {(run.dataset, label): run for run, label in zip(runs, labels)}
    for (_roi, dataset, domain), group in entries.groupby(["roi", "dataset", "domain"], sort=False):
        if dataset not in references:
            continue
        reference = labels[references[dataset]]
        members = list(group["method"])
        if reference not in members:
            continue
        results = [_scope_results(by_label[(dataset, m)], domain) for m in members]
        tests = paired_tests(results, members.index(reference))
        for index, method, test in zip(group.index, members, tests):
            entries.loc[index, "vs"] = reference if method != reference else "(reference)"
            for key in ("n_paired", "mean_diff", "p_wilcoxon", "p_holm"):
                entries.loc[index, key] = test[key]
    return entries


def _row_order(frame: pd.DataFrame) -> pd.DataFrame:
    """ROI, dataset, then domains alphabetically with the whole-dataset row last."""
    order = frame.assign(_all=frame["domain"] == "all")
    return order.sort_values(["roi", "dataset", "_all", "domain", "level"], kind="stable").drop(columns="_all")


WIDE_STATS = [("DSC", "dsc", ("mean", "std", "median", "ci_low", "ci_high")), ("mIoU", "miou", ("mean", "std")),
              ("NSD", "nsd", ("mean", "std", "n_undefined")), ("HD95", "hd95", ("mean", "std", "n_undefined"))]
WIDE_TESTS = ("vs", "n_paired", "mean_diff", "p_wilcoxon", "p_holm")


def wide_table(entries: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """The Table 1 shape with numbers: per method ``DSC mean``, ``DSC ci_low``, ..., ``HD95 mean``,
    ``p_holm`` (paired test against the reference), ``n_failed``."""
    rows = _row_order(entries[ROW_KEYS].drop_duplicates())
    indexed = entries.set_index(ROW_KEYS + ["method"])
    keys = list(rows[ROW_KEYS].itertuples(index=False))
    for method in methods:
        for name, metric, statistics in WIDE_STATS:
            for stat in statistics:
                rows[f"{method} {name} {stat}"] = [indexed[f"{metric}_{stat}"].get((*key, method)) for key in keys]
        for column in (*WIDE_TESTS, "n_scored", "n_failed"):
            rows[f"{method} {column}"] = [indexed[column].get((*key, method)) for key in keys]
    return rows.reset_index(drop=True)


def table_rows(wide: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table, the paper's shape (markdown and HTML): per method DSC
    (mean±std [95 % CI]) and mIoU."""
    header = ["ROI", "Dataset", "Domain"] + [f"{m} {name}" for m in methods for name in ("DSC", "mIoU")]
    rows = []
    for record in wide.to_dict("records"):
        cells = [record["roi"], record["dataset"], _domain(record)]
        for m in methods:
            cells += [ci_cell(record[f"{m} DSC mean"], record[f"{m} DSC std"], record[f"{m} DSC ci_low"],
                              record[f"{m} DSC ci_high"]), _cell(record[f"{m} mIoU mean"], record[f"{m} mIoU std"])]
        rows.append(cells)
    return header, rows


def stats_rows(wide: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[list[str]]]:
    """The statistics in long form, one line per row × method: n, DSC with CI and median, NSD, HD95
    (with the undefined count) and the paired test against the reference."""
    header = ["Dataset", "Domain", "Method", "n", "DSC [95% CI]", "DSC median", "NSD", "HD95",
              "p vs reference (Holm), n paired"]
    rows = []
    for record in wide.to_dict("records"):
        for m in methods:
            n = record.get(f"{m} n_scored")
            if n is None or pd.isna(n):
                continue
            undefined = record.get(f"{m} HD95 n_undefined")
            hd95 = _cell(record[f"{m} HD95 mean"], record[f"{m} HD95 std"], 2)
            if undefined and not pd.isna(undefined):
                hd95 += f" ({int(undefined)} undefined)"
            rows.append([record["dataset"], _domain(record), m, str(int(n)),
                         ci_cell(record[f"{m} DSC mean"], None, record[f"{m} DSC ci_low"], record[f"{m} DSC ci_high"]),
                         _cell(record[f"{m} DSC median"]), _cell(record[f"{m} NSD mean"], record[f"{m} NSD std"]),
                         hd95, _test_cell(record, m)])
    return header, rows


def _domain(record: dict) -> str:
    return record["domain"] + (" (3D)" if record["level"] == "volume" else "")


def _test_cell(record: dict, method: str) -> str:
    vs = record.get(f"{method} vs")
    if not isinstance(vs, str):
        return "–"
    if vs == "(reference)":
        return "reference"
    n = record.get(f"{method} n_paired")
    return f"{p_cell(record[f'{method} p_holm'])}, n={int(n) if n is not None and not pd.isna(n) else 0}"


def run_notes(runs: list, labels: list[str], references: dict[str, int]) -> list[str]:
    notes = []
    for run, label in zip(runs, labels):
        summary, stats = run.summary, run.summary.stats
        failed = f", {stats.n_failed} failed" if stats.n_failed else ""
        unlabelled = f", {stats.n_unlabelled} unlabelled" if stats.n_unlabelled else ""
        unit = {"pixel": "pixels"}.get(summary.spacing_unit, summary.spacing_unit)
        units = f"; NSD at {summary.nsd_tolerance:g} {unit}, HD95 in {unit}" if unit else ""
        status = "" if run.scored else " — UNSCORED (unlabelled images: predictions only)"
        if summary.extra.get("uses_labels"):
            status += " — uses_labels: slices were chosen by the reference labels (skip_empty)"
        notes.append(f"- {label} on {run.dataset}: {run.path} ({stats.n_ok}/{stats.n_total} ok"
                     f"{failed}{unlabelled}{units}){status}")
    for dataset, index in references.items():
        notes.append(f"- paired tests on {dataset}: against {labels[index]}")
    return notes


def table_legend(seed: int = BOOTSTRAP_SEED, n_resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    """The footnote of the table: what each number is, with the bootstrap's seed and resamples.

    Args:
        seed: the bootstrap's seed (``--seed``); n_resamples: its resamples.
    """
    return (f"DSC: mean±std over images [seeded percentile bootstrap 95% CI of the mean, scipy.stats.bootstrap, "
            f"seed {seed}, {n_resamples} resamples], and its median; mIoU, NSD, HD95: mean±std; rows marked (3D) "
            "over volumes (3D scores of the stacked slices). p: two-sided Wilcoxon signed-rank on per-image Dice "
            "against the reference method, Holm-corrected over the methods of the row; n = images both scored. "
            "Failed samples are counted and left out of the means; HD95 is undefined (counted) when exactly one "
            "mask is empty.")


def table_markdown(wide: pd.DataFrame, methods: list[str], runs: list, labels: list[str],
                   references: dict[str, int], seed: int = BOOTSTRAP_SEED) -> str:
    header, rows = table_rows(wide, methods) if len(wide) else (["ROI", "Dataset", "Domain"], [])
    text = markdown_table(header, rows)
    if len(wide):
        text += "\n## Statistics\n\n" + markdown_table(*stats_rows(wide, methods))
    return text + "\n".join(["", table_legend(seed), *run_notes(runs, labels, references)]) + "\n"
