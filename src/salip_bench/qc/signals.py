"""The label-free signals a method records for the quality estimators: one ``qc_*`` column each.

Each is a number computed without the ground truth (None where it does not exist for a sample, e.g.
the margin over the runner-up when every candidate was retrieved); the estimators
(``salip_bench.qc``) turn them into ``quality``. A method declares the signals it can give
(``qc_signals`` on its class), which is how a quality estimator that does not fit it is refused.
"""
from __future__ import annotations

import math

import numpy as np

# SaLIP and its variants (retrieval, then SAM's box refinement).
RETRIEVAL_SCORE = "qc_retrieval_score"  # mean cosine similarity of the retrieved candidates to their class
MARGIN_RUNNER_UP = "qc_margin_runner_up"  # ... minus the best candidate their class did not pick
MARGIN_BACKGROUND = "qc_margin_background"  # ... minus their similarity to the background prototype
RETRIEVED_PRED_IOU = "qc_retrieved_pred_iou"  # the generator's predicted IoU of the retrieved candidates
RETRIEVED_STABILITY = "qc_retrieved_stability"  # the generator's stability score of the retrieved candidates
REFINED_PRED_IOU = "qc_refined_pred_iou"  # SAM's predicted IoU of the refined mask (the refiner's engine)
REFINED_STABILITY = "qc_refined_stability"  # SAM's stability score of the refined mask
RETRIEVED_REFINED_IOU = "qc_retrieved_refined_iou"  # IoU of the retrieved union and the refined mask
N_KEPT = "qc_n_kept"  # candidates that survived the filter (0: nothing to retrieve from)
SALIP_SIGNALS = (RETRIEVAL_SCORE, MARGIN_RUNNER_UP, MARGIN_BACKGROUND, RETRIEVED_PRED_IOU, RETRIEVED_STABILITY,
                 REFINED_PRED_IOU, REFINED_STABILITY, RETRIEVED_REFINED_IOU, N_KEPT)
# SAM prompted once (GT boxes, or no prompt at all).
SAM_PRED_IOU = "qc_sam_pred_iou"
SAM_STABILITY = "qc_sam_stability"
SAM_SIGNALS = (SAM_PRED_IOU, SAM_STABILITY)
# SAM 3 prompted with text: its own instance scores (presence x instance probability).
SAM3_SCORE = "qc_sam3_score"  # mean score of the kept instances (none found: no signal, quality 0)
SAM3_SIGNALS = (SAM3_SCORE,)
# The U-Net's foreground probabilities.
MEAN_CONFIDENCE = "qc_mean_confidence"  # mean probability inside the predicted mask (empty: of background)
MEAN_ENTROPY = "qc_mean_entropy"  # mean binary entropy (bits) over the predicted mask and its uncertain rim
UNET_SIGNALS = (MEAN_CONFIDENCE, MEAN_ENTROPY)


def number(value: object, digits: int = 6) -> float | None:
    """``value`` as a rounded float for a ``qc_*`` column; None for None, NaN or infinity."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree completely (1)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
