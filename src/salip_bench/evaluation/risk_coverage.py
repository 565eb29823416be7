"""How good a quality score is at telling good predictions from bad ones: risk-coverage analysis.

Following the failure-detection benchmark of Zenk et al. (Medical Image Analysis 2025), with risk
= 1 − Dice: the predictions are accepted in decreasing quality; at each distinct quality threshold
the *coverage* is the fraction accepted and the *selective risk* their mean risk. AURC is the area
under that step curve (= the mean of the selective risks at every coverage step n/N when qualities
are distinct; tied qualities are accepted together, so a constant score is exactly random); the
optimal AURC is that of the ranking by true risk, and a random ranking's expected AURC is the mean
risk at every coverage. Derived: e-AURC = AURC − optimal, normalised AURC = (random − AURC) /
(random − optimal) (0: random, 1: perfect, negative: worse than random). Spearman's ρ (quality vs
Dice, ``scipy.stats.spearmanr``) and the failure AUROC (failure: Dice < ``failure_dice``; how well a
low quality flags it, the Mann–Whitney U statistic of ``scipy.stats.mannwhitneyu`` over the pairs;
scikit-learn is not a dependency) complete the picture. Every number is None where it is undefined
(one sample, a constant Dice, no failure or no success), never NaN.

The per-run block of ``summary.json`` (:func:`quality_summary`) also reports abstention: coverage
(the fraction of predictions kept) and mean Dice with and without abstention.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

from salip_bench.evaluation.schema import SampleRecord, as_record
from salip_bench.qc.base import ABSTAINED, DICE_WITHOUT_ABSTENTION, QUALITY
from salip_bench.qc.settings import DEFAULT_FAILURE_DICE
from salip_bench.registry import PluginError


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def rc_curve(quality: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage step curve: (coverage, selective risk) at each distinct quality, best first.

    Args:
        quality: (N,) scores, higher = more trusted.
        risk: (N,) risks (1 − Dice).
    """
    order = np.argsort(-quality, kind="stable")
    quality, risk = quality[order], risk[order]
    ends = np.flatnonzero(np.r_[quality[1:] != quality[:-1], True])  # last index of each tie group
    accepted = ends + 1
    return accepted / len(risk), np.cumsum(risk)[ends] / accepted


def aurc(coverage: np.ndarray, selective_risk: np.ndarray) -> float:
    """Area under a step risk-coverage curve (each level held over the coverage it adds)."""
    return float(np.sum(selective_risk * np.diff(np.r_[0.0, coverage])))


def failure_auroc(quality: np.ndarray, dice: np.ndarray, failure_dice: float) -> float | None:
    """AUROC of ``-quality`` for detecting failures (Dice < ``failure_dice``); None without both classes.

    The probability that a random failure has a lower quality than a random success (ties: 1/2),
    i.e. Mann–Whitney's U of the successes' qualities over the failures', divided by the pairs.
    """
    failed = dice < failure_dice
    if failed.all() or not failed.any():
        return None
    u = mannwhitneyu(quality[~failed], quality[failed], alternative="two-sided").statistic
    return float(u) / (int(failed.sum()) * int((~failed).sum()))


def risk_coverage(quality: Sequence[float], dice: Sequence[float], failure_dice: float = DEFAULT_FAILURE_DICE) -> dict:
    """Every number of the risk-coverage analysis of one method's predictions.

    Args:
        quality: per-prediction quality in [0, 1].
        dice: the same predictions' Dice (without abstention: the score ranks what the method predicted).
        failure_dice: Dice below which a prediction counts as a failure.

    Returns:
        ``n``, ``n_failures``, ``aurc``, ``aurc_optimal``, ``aurc_random``, ``e_aurc``, ``normalised_aurc``,
        ``spearman_rho``, ``spearman_p``, ``failure_auroc``, ``failure_dice`` and the curve
        (``coverage``, ``selective_risk``); None where undefined.
    """
    quality, dice = np.asarray(quality, np.float64), np.asarray(dice, np.float64)
    keep = np.isfinite(quality) & np.isfinite(dice)
    quality, dice = quality[keep], dice[keep]
    risk = 1.0 - dice
    out: dict = {"n": int(len(dice)), "n_failures": int((dice < failure_dice).sum()), "failure_dice": failure_dice}
    if len(dice) == 0:
        return {**out, **dict.fromkeys(("aurc", "aurc_optimal", "aurc_random", "e_aurc", "normalised_aurc",
                                        "spearman_rho", "spearman_p", "failure_auroc")),
                "coverage": [], "selective_risk": []}
    coverage, selective = rc_curve(quality, risk)
    observed = aurc(coverage, selective)
    optimal = aurc(*rc_curve(-risk, risk))  # accept the lowest risks first
    random = float(risk.mean())
    spread = random - optimal
    rho, p = (spearmanr(quality, dice) if len(dice) > 1 and np.ptp(quality) > 0 and np.ptp(dice) > 0
              else (float("nan"), float("nan")))
    return {**out, "aurc": observed, "aurc_optimal": optimal, "aurc_random": random, "e_aurc": observed - optimal,
            "normalised_aurc": (random - observed) / spread if spread > 1e-12 else None,
            "spearman_rho": _finite(rho), "spearman_p": _finite(p),
            "failure_auroc": failure_auroc(quality, dice, failure_dice),
            "coverage": [round(float(c), 6) for c in coverage],
            "selective_risk": [round(float(r), 6) for r in selective]}


def abstention_summary(rows: Sequence[Mapping]) -> dict:
    """Coverage and mean Dice with and without abstention over rows with a quality.

    Args:
        rows: per prediction ``abstained`` (absent: not abstained), ``dice`` (of the abstained, empty
            mask where it abstained; None: unlabelled) and ``dice_without_abstention`` (absent: ``dice``).
    """
    abstained = np.array([bool(r.get(ABSTAINED) or False) for r in rows])
    scored = [r for r in rows if r.get("dice") is not None]
    with_ = [float(r["dice"]) for r in scored]
    without = [float(unabstained_dice(r)) for r in scored]
    kept = [float(r["dice"]) for r in scored if not r.get(ABSTAINED)]
    return {"n": len(rows), "n_abstained": int(abstained.sum()),
            "coverage": float(1.0 - abstained.mean()) if len(rows) else None,
            "dice_mean": float(np.mean(with_)) if with_ else None,
            "dice_mean_without_abstention": float(np.mean(without)) if without else None,
            "dice_mean_of_kept": float(np.mean(kept)) if kept else None}


def quality_summary(records: Sequence[SampleRecord | dict], cfg: Mapping) -> dict | None:
    """The ``quality`` block of ``summary.json`` (None: no record has a quality).

    Args:
        records: the run's records.
        cfg: the resolved run config (its ``qc`` section: estimator, threshold, failure Dice).
    """
    rows = []
    for record in records:
        record = as_record(record)
        data = record.to_dict()
        if record.ok and data.get(QUALITY) is not None:
            rows.append(data)
    if not rows:
        return None
    qc = cfg.get("qc") or {}
    failure_dice = float(qc.get("failure_dice", DEFAULT_FAILURE_DICE))
    labelled = [r for r in rows if r.get("dice") is not None]
    analysis = risk_coverage([r[QUALITY] for r in labelled], [unabstained_dice(r) for r in labelled], failure_dice)
    return {"estimator": resolved_estimator(cfg), "abstain_below": qc.get("abstain_below"),
            "quality_mean": float(np.mean([r[QUALITY] for r in rows])), "labels_used": False,
            "abstention": abstention_summary(rows), "risk_coverage": analysis}


def unabstained_dice(row: Mapping) -> float:
    """The Dice of what the method predicted (before abstention emptied it), from a record or CSV row."""
    value = row.get(DICE_WITHOUT_ABSTENTION)
    return float(row["dice"]) if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def resolved_estimator(cfg: Mapping) -> str | None:
    """The estimator name the run used (``qc=auto``: the method's default)."""
    from salip_bench.qc.build import estimator_name  # here: the report reads results without torch

    qc = cfg.get("qc") or {}
    try:
        return estimator_name(qc, cfg["method"]["name"])
    except (PluginError, KeyError, TypeError):
        return qc.get("name")
