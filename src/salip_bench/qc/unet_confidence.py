"""Quality estimator ``unet_confidence``: the U-Net's mean foreground probability inside its mask."""
from __future__ import annotations

from salip_bench.qc import signals as S
from salip_bench.qc.base import QualityEstimator, signal
from salip_bench.registry import QC
from salip_bench.types import Prediction, Sample


@QC.register("unet_confidence")
class UNetConfidenceQuality(QualityEstimator):
    """``qc_mean_confidence``: the mean probability over the predicted mask (an empty mask: the mean
    background probability, how sure the network is that nothing is there)."""

    requires = (S.MEAN_CONFIDENCE,)

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        return signal(prediction, S.MEAN_CONFIDENCE)
