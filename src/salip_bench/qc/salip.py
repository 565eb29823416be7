"""Quality estimator ``salip``: how sure SaLIP's own stages were, from their label-free signals."""
from __future__ import annotations

import math

from salip_bench.qc import signals as S
from salip_bench.qc.base import QualityEstimator, signal
from salip_bench.registry import QC
from salip_bench.types import Prediction, Sample

# Terms already in [0, 1] (SAM's predicted IoU can slightly exceed 1: clipped).
PROBABILITY_TERMS = (S.REFINED_PRED_IOU, S.REFINED_STABILITY, S.RETRIEVED_REFINED_IOU, S.RETRIEVED_PRED_IOU,
                     S.RETRIEVED_STABILITY)
# Cosine margins, turned into CLIP's own zero-shot probability: softmax over (class, other) at CLIP's
# logit scale, i.e. sigmoid(scale * margin).
MARGIN_TERMS = (S.MARGIN_BACKGROUND, S.MARGIN_RUNNER_UP)
DEFAULT_WEIGHTS = {S.REFINED_PRED_IOU: 1.0, S.REFINED_STABILITY: 1.0, S.RETRIEVED_REFINED_IOU: 1.0,
                   S.RETRIEVED_PRED_IOU: 0.5, S.RETRIEVED_STABILITY: 0.5, S.MARGIN_BACKGROUND: 1.0,
                   S.MARGIN_RUNNER_UP: 0.5}


@QC.register("salip")
class SalipQuality(QualityEstimator):
    """Weighted mean of the signals the run has: SAM's predicted IoU and stability of the refined mask,
    the agreement of retrieval and refinement (their IoU), the generator's scores of the retrieved
    candidates, and CLIP's margins over the background prototype and the runner-up candidate as
    probabilities. A signal a configuration lacks (``refiner=none``: no refined mask) drops out of
    the mean; nothing retrieved (no kept candidate) gives quality 0.

    Args:
        weights: ``{signal column: weight}`` (missing signals: weight 0; unknown columns are refused).
        logit_scale: CLIP's softmax scale for the margins (100 for the released CLIP models).
    """

    requires = (S.RETRIEVAL_SCORE,)

    def __init__(self, weights: dict[str, float] | None = None, logit_scale: float = 100.0) -> None:
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(self.weights) - set(PROBABILITY_TERMS) - set(MARGIN_TERMS))
        if unknown:
            raise ValueError(f"qc salip: unknown weight(s) {unknown}; signals: {sorted(DEFAULT_WEIGHTS)}")
        self.logit_scale = logit_scale

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        if signal(prediction, S.RETRIEVAL_SCORE) is None:
            return None  # nothing was retrieved
        total = weight_sum = 0.0
        for name, weight in self.weights.items():
            value = signal(prediction, name)
            if value is None or weight == 0:
                continue
            if name in MARGIN_TERMS:
                value = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, self.logit_scale * value))))
            total += weight * min(1.0, max(0.0, value))
            weight_sum += weight
        return total / weight_sum if weight_sum else None
