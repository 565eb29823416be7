"""What ``salip-bench-tune`` optimises, and the abstention threshold it may choose (issue 22).

- ``tune.objective=dice`` (default): trials are ranked by mean Dice on the labelled split.
- ``tune.objective=quality``: by mean label-free quality (``salip_bench.qc``): test-time tuning that
  needs no mask at all (``tune.split.mask_dir=null`` is then allowed).
- ``tune.abstain=true``: after the winner is chosen, ``qc.abstain_below`` = τ is chosen on the
  winner's own split results (labels needed): the τ that maximises mean Dice with abstention (an
  abstained prediction scores as the empty mask: 1 where the organ is absent, else 0), the smallest
  τ on a tie; candidates are 0 and the midpoints between consecutive distinct qualities (and 1).

``tuned.yaml`` says which objective chose its values and whether labels were used
(``score.objective``, ``score.labels_used``), and summary.json of a ``tuned=`` run carries that
under ``config.tuned.score``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from salip_bench.evaluation.risk_coverage import unabstained_dice
from salip_bench.evaluation.tuned import TuningError
from salip_bench.qc.base import QUALITY

OBJECTIVES = {"dice": "dice_mean", "quality": "quality_mean"}  # objective -> trials.csv column
ABSTAIN_KEY = "qc.abstain_below"


def check_objective(settings: Mapping) -> str:
    """``tune.objective``, checked (one line naming the choices)."""
    objective = settings.get("objective", "dice")
    if objective not in OBJECTIVES:
        raise TuningError(f"tune.objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if not isinstance(settings.get("abstain", False), bool):
        raise TuningError(f"tune.abstain={settings.get('abstain')!r}: expected true or false")
    return objective


def labels_used(settings: Mapping) -> bool:
    """Whether this tuning reads the split's masks (Dice objective, or choosing τ)."""
    return settings.get("objective", "dice") == "dice" or bool(settings.get("abstain", False))


def trial_scores(summary: Mapping) -> dict:
    """A trial's scores for ``trials.csv``: mean Dice (None: unlabelled split) and mean quality."""
    quality = summary.get("quality") or {}
    return {"dice_mean": summary.get("dice_mean"), "quality_mean": quality.get("quality_mean")}


def objective_column(objective: str, frame: pd.DataFrame, method: str) -> pd.Series:
    """The trials' scores by ``objective`` (a failed trial: worst).

    Raises:
        TuningError: ``objective=quality`` but no trial recorded a quality (the method has none).
    """
    column = OBJECTIVES[objective]
    if objective == "quality" and frame[column].isna().all():
        raise TuningError(f"tune.objective=quality: method={method} records no quality score "
                          "(qc=none, or a method without one such as oracle); use tune.objective=dice")
    return pd.to_numeric(frame[column], errors="coerce").fillna(-np.inf)


def choose_abstention(results_csv: Path) -> dict:
    """τ for ``qc.abstain_below`` from a trial's ``results.csv`` on the labelled split.

    Args:
        results_csv: the winning trial's results.

    Returns:
        ``{"abstain_below": τ, "dice_mean_with_abstention": ..., "coverage": ..., "n_images": ...}``.

    Raises:
        TuningError: no labelled row with a quality to choose on.
    """
    frame = pd.read_csv(results_csv) if results_csv.is_file() else pd.DataFrame()
    if QUALITY not in frame.columns or "dice" not in frame.columns:
        raise TuningError("tune.abstain=true: the trials recorded no quality or no Dice (it needs a method with "
                          "a quality score and a labelled tune.split)")
    frame = frame[(frame["status"] == "ok") & frame[QUALITY].notna() & frame["dice"].notna()]
    if not len(frame):
        raise TuningError("tune.abstain=true: no labelled split image with a quality to choose tau on")
    quality = frame[QUALITY].to_numpy(float)
    kept = np.array([unabstained_dice(r) for r in frame.to_dict("records")])
    empty = (frame["gt_area"].fillna(1).to_numpy() == 0).astype(float)  # Dice of the empty mask
    levels = np.unique(quality)
    candidates = [0.0, *((levels[1:] + levels[:-1]) / 2).round(6).tolist(), 1.0]
    best = max(candidates, key=lambda t: (np.where(quality >= t, kept, empty).mean(), -t))
    return {"abstain_below": float(best),
            "dice_mean_with_abstention": float(np.where(quality >= best, kept, empty).mean()),
            "coverage": float((quality >= best).mean()), "n_images": int(len(frame))}
