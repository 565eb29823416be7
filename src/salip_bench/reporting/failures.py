"""Failure attribution: which stage (generator, retriever, refinement) lost each sample, for runs
that recorded ``oracle_dice`` and ``retrieved_dice`` (SaLIP-like methods)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from salip_bench.evaluation.schema import STAGE_DICE
from salip_bench.reporting.text import cell as _cell
from salip_bench.reporting.text import markdown_table

CATEGORIES = ["generator_miss", "retriever_miss", "refinement_loss", "ok", "failed", "unscored"]


def attribute_failures(results: pd.DataFrame, tau: float, delta: float) -> pd.Series:
    """The stage that lost each sample: ``generator_miss`` (no kept candidates reach ``tau``),
    ``retriever_miss`` (they do, the retrieved ones do not), ``refinement_loss`` (refinement cost
    more than ``delta`` Dice), ``ok``, ``failed`` (the sample raised) or ``unscored`` (no stage scores)."""
    failed = results["status"].astype(str) != "ok"
    oracle, retrieved, final = (pd.to_numeric(results[c], errors="coerce")
                                for c in (*STAGE_DICE, "dice"))
    conditions = [failed, oracle.isna() | retrieved.isna() | final.isna(), oracle < tau, retrieved < tau,
                  final < retrieved - delta]
    choices = ["failed", "unscored", "generator_miss", "retriever_miss", "refinement_loss"]  # first true wins
    return pd.Series(np.select(conditions, choices, default="ok"), index=results.index)


def failure_table(runs: list, labels: list[str], tau: float, delta: float) -> pd.DataFrame:
    """Per run (dataset × method) the count of each category and the mean Dice after each stage."""
    rows = []
    for run, label in zip(runs, labels):
        results = run.results
        # Every run's results.csv has the stage columns (one column set): only values make it attributable.
        if (results is None or not set(STAGE_DICE) <= set(results.columns)
                or results[list(STAGE_DICE)].isna().all().all()):
            continue
        categories = attribute_failures(results, tau, delta)
        scored = results[~categories.isin(["failed", "unscored"])]
        row = {"roi": run.roi, "dataset": run.dataset, "method": label, "n": len(results)}
        row.update({c: int((categories == c).sum()) for c in CATEGORIES})
        for column in (*STAGE_DICE, "dice"):
            values = pd.to_numeric(scored[column], errors="coerce")
            row[f"{column}_mean"] = float(values.mean()) if len(values) else None
        rows.append(row)
    columns = ["roi", "dataset", "method", "n", *CATEGORIES, "oracle_dice_mean", "retrieved_dice_mean", "dice_mean"]
    return pd.DataFrame(rows, columns=columns)


def failures_markdown(table: pd.DataFrame, runs: list, labels: list[str], tau: float, delta: float) -> str:
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


