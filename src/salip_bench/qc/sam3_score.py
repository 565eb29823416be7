"""Quality estimator ``sam3_score``: SAM 3's own score of the instances it returned."""
from __future__ import annotations

from salip_bench.qc import signals as S
from salip_bench.qc.base import QualityEstimator, signal
from salip_bench.registry import QC
from salip_bench.types import Prediction, Sample


@QC.register("sam3_score")
class Sam3ScoreQuality(QualityEstimator):
    """``qc_sam3_score``: the mean score (SAM 3's presence times instance probability) of the kept
    instances; no instance found gives quality 0."""

    requires = (S.SAM3_SCORE,)

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        return signal(prediction, S.SAM3_SCORE)
