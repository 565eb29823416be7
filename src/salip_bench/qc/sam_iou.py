"""Quality estimator ``sam_iou``: SAM's own predicted IoU of its mask (GT-box SAM, un-prompted SAM)."""
from __future__ import annotations

from salip_bench.qc import signals as S
from salip_bench.qc.base import QualityEstimator, signal
from salip_bench.registry import QC
from salip_bench.types import Prediction, Sample


@QC.register("sam_iou")
class SamIoUQuality(QualityEstimator):
    """SAM's predicted IoU, optionally mixed with its stability score.

    Args:
        stability_weight: weight of the stability score against the predicted IoU (0: IoU alone).
    """

    requires = (S.SAM_PRED_IOU,)

    def __init__(self, stability_weight: float = 0.0) -> None:
        if not 0.0 <= stability_weight <= 1.0:
            raise ValueError(f"qc.stability_weight={stability_weight}: expected a number in [0, 1]")
        self.stability_weight = stability_weight

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        iou, stability = signal(prediction, S.SAM_PRED_IOU), signal(prediction, S.SAM_STABILITY)
        if iou is None:
            return None
        if stability is None or self.stability_weight == 0:
            return iou
        return (1 - self.stability_weight) * iou + self.stability_weight * stability
