"""Statistics of the report: bootstrap confidence intervals and paired tests, through ``scipy.stats``.

Only Holm's step-down correction is written here: scipy offers Benjamini–Hochberg
(``false_discovery_control``) but not Holm, and Holm is a few lines of ordering.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE = 0.95


def bootstrap_ci(values: np.ndarray, seed: int = BOOTSTRAP_SEED, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of the mean (``scipy.stats.bootstrap``), seeded.

    Args:
        values: per-image (or per-volume) scores; NaNs must already be removed.
        seed: seed of the resampling, so a report is reproducible.
        n_resamples: bootstrap resamples.
        confidence: confidence level.

    Returns (None, None) for fewer than two values; (v, v) when all values are equal.
    """
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return None, None
    if np.all(values == values[0]):  # no spread: every resample has the same mean
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_paired(values: np.ndarray, reference: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired scores (``scipy.stats.wilcoxon``);
    1.0 when every difference is zero, None for fewer than one pair."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if values.size < 1:
        return None
    if np.all(values == reference):
        return 1.0
    return float(stats.wilcoxon(values, reference, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None."""
    index = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(index, key=lambda i: pvalues[i])
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def paired_dice(reference: pd.DataFrame, other: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice of two runs on the images both scored (matched by id), as (other, reference)."""
    left = _dice_by_id(other)
    right = _dice_by_id(reference)
    shared = left.index.intersection(right.index)
    return left.loc[shared].to_numpy(), right.loc[shared].to_numpy()


def _dice_by_id(results: pd.DataFrame) -> pd.Series:
    ok = results[results["status"].astype(str) == "ok"]
    dice = pd.to_numeric(ok["dice"], errors="coerce")
    return dice.set_axis(ok["id"].astype(str)).dropna().groupby(level=0).first()


def paired_tests(results: list[pd.DataFrame | None], reference: int) -> list[dict]:
    """Wilcoxon signed-rank of each run against run ``reference`` on per-image Dice, Holm-corrected
    over the other runs. One dict per run: ``n_paired``, ``p_wilcoxon``, ``p_holm``, ``mean_diff``
    (mean of run − reference); the reference's own entry is all None."""
    entries: list[dict] = []
    for i, frame in enumerate(results):
        entry = {"n_paired": None, "p_wilcoxon": None, "mean_diff": None}
        if i != reference and frame is not None and results[reference] is not None and "dice" in frame.columns:
            values, ref = paired_dice(results[reference], frame)
            entry = {"n_paired": int(values.size), "p_wilcoxon": wilcoxon_paired(values, ref),
                     "mean_diff": float(np.mean(values - ref)) if values.size else None}
        entries.append(entry)
    for entry, adjusted in zip(entries, holm([e["p_wilcoxon"] for e in entries])):
        entry["p_holm"] = adjusted
    return entries
