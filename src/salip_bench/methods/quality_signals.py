"""The ``qc_*`` signals of SaLIP's stages (``salip_bench.qc.signals``), computed from one pipeline run
without the ground truth."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from salip_bench.methods.pipeline import Refine, SalipResult
from salip_bench.qc import signals as S
from salip_bench.types import Retrieved


def scored_refine(refiner: Refine, refined: dict) -> Refine:
    """``refiner`` as the pipeline's refine step, leaving SAM's confidence in the refined mask in
    ``refined`` (``predicted_iou``, ``stability``) when the refiner can give it (``refine_scored``).

    Args:
        refiner: the configured refiner.
        refined: filled on each call.
    """
    scored: Callable | None = getattr(refiner, "refine_scored", None)
    if scored is None:
        return refiner

    def refine(image: np.ndarray, retrieved: Retrieved) -> np.ndarray:
        mask, scores = scored(image, retrieved.candidates.boxes)
        refined.update(scores)
        return mask
    return refine


def _mean(values: np.ndarray | None) -> float | None:
    values = None if values is None else np.asarray(values, np.float64)
    finite = values[np.isfinite(values)] if values is not None else np.zeros(0)
    return float(finite.mean()) if len(finite) else None


def salip_signals(result: SalipResult, refined: dict) -> dict:
    """The signals of one SaLIP run (None where a signal does not exist for it).

    Args:
        result: the pipeline's result.
        refined: what :func:`scored_refine` left (empty: the refiner gives no scores).
    """
    retrieved = result.retrieved
    picked = retrieved.candidates
    signals = dict.fromkeys(S.SALIP_SIGNALS)
    signals[S.N_KEPT] = len(result.kept)
    if len(picked) == 0:
        return signals  # nothing retrieved: every other signal undefined, quality 0
    scores = np.asarray(retrieved.scores, np.float64)
    signals[S.RETRIEVAL_SCORE] = S.number(scores.mean())
    if retrieved.runner_up is not None:
        signals[S.MARGIN_RUNNER_UP] = S.number(_mean(scores - retrieved.runner_up))
    if retrieved.background is not None:
        signals[S.MARGIN_BACKGROUND] = S.number(_mean(scores - retrieved.background))
    signals[S.RETRIEVED_PRED_IOU] = S.number(_mean(picked.predicted_iou))
    signals[S.RETRIEVED_STABILITY] = S.number(_mean(picked.stability_score))
    if refined:
        signals[S.REFINED_PRED_IOU] = S.number(refined.get("predicted_iou"))
        signals[S.REFINED_STABILITY] = S.number(refined.get("stability"))
        signals[S.RETRIEVED_REFINED_IOU] = S.number(S.mask_iou(picked.masks.any(axis=0), result.mask))
    return signals
