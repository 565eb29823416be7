"""Quality estimator ``unet_entropy``: one minus the U-Net's mean predictive entropy."""
from __future__ import annotations

from salip_bench.qc import signals as S
from salip_bench.qc.base import QualityEstimator, signal
from salip_bench.registry import QC
from salip_bench.types import Prediction, Sample


@QC.register("unet_entropy")
class UNetEntropyQuality(QualityEstimator):
    """``1 - qc_mean_entropy``: the binary entropy (bits, so in [0, 1]) of the foreground probability,
    averaged over the predicted mask and its uncertain rim (see ``methods/unet.py``)."""

    requires = (S.MEAN_ENTROPY,)

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        entropy = signal(prediction, S.MEAN_ENTROPY)
        return None if entropy is None else 1.0 - entropy
