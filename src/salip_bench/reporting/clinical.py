"""HC18's clinical metric: head-circumference absolute difference in mm (mean ± sd), the measure
the HC18 challenge ranks by, for runs whose results carry ``hc_abs_err_mm`` (the ``hc18`` dataset)."""
from __future__ import annotations

import pandas as pd

from salip_bench.reporting.text import cell, markdown_table


def hc_table(runs: list, labels: list[str]) -> pd.DataFrame:
    """Per run with head-circumference columns: n measured, mean / sd / median of the absolute
    difference (mm) and how many ok images had none (empty prediction, no pixel size)."""
    rows = []
    for run, label in zip(runs, labels):
        results = run.results
        if results is None or "hc_abs_err_mm" not in results.columns:
            continue
        ok = results[results["status"].astype(str) == "ok"]
        errors = pd.to_numeric(ok["hc_abs_err_mm"], errors="coerce")
        measured = errors.dropna()
        rows.append({"roi": run.roi, "dataset": run.dataset, "method": label, "n": int(measured.size),
                     "n_unmeasured": int(errors.isna().sum()),
                     "hc_abs_diff_mm_mean": float(measured.mean()) if measured.size else None,
                     "hc_abs_diff_mm_sd": float(measured.std(ddof=1)) if measured.size > 1 else None,
                     "hc_abs_diff_mm_median": float(measured.median()) if measured.size else None})
    columns = ["roi", "dataset", "method", "n", "n_unmeasured", "hc_abs_diff_mm_mean", "hc_abs_diff_mm_sd",
               "hc_abs_diff_mm_median"]
    return pd.DataFrame(rows, columns=columns)


def hc_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Dataset", "Method", "n", "HC abs. difference (mm), mean ± sd", "median", "not measured"]
    rows = [[r["dataset"], r["method"], str(r["n"]), cell(r["hc_abs_diff_mm_mean"], r["hc_abs_diff_mm_sd"], 2),
             cell(r["hc_abs_diff_mm_median"], None, 2), str(r["n_unmeasured"])] for r in table.to_dict("records")]
    return header, rows


def hc_markdown(table: pd.DataFrame) -> str:
    text = ["# Head circumference (HC18)", "",
            "Absolute difference between the circumference of the ellipse fitted to the prediction and the "
            "reference, in mm (sd with ddof=1). Not measured: empty prediction or no pixel size.", ""]
    return "\n".join(text) + markdown_table(*hc_rows(table))
