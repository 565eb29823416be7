"""The quality gate of a run: score every prediction, and abstain below ``qc.abstain_below``.

Applied to each prediction before it is scored: it adds ``quality`` (and, with a threshold,
``abstained`` and ``dice_without_abstention``) to the prediction's columns; an abstained prediction
becomes an empty mask ("the organ is not here"), and Dice, IoU, NSD and HD95 are those of that empty
mask, so on an image without the organ abstaining is right, and elsewhere it costs what it costs.
"""
from __future__ import annotations

import numpy as np

from salip_bench.metrics import dice_iou
from salip_bench.qc.base import ABSTAINED, DICE_WITHOUT_ABSTENTION, QUALITY
from salip_bench.types import Prediction, Sample


class QualityGate:
    """Args:
        estimator: a quality estimator (``(sample, prediction) -> float`` in [0, 1]).
        abstain_below: abstain from predictions whose quality is below it (None: never).
    """

    def __init__(self, estimator, abstain_below: float | None = None) -> None:
        self.estimator = estimator
        self.abstain_below = abstain_below

    def __call__(self, sample: Sample, prediction: Prediction) -> Prediction:
        """``prediction`` with its quality recorded, emptied if it falls below the threshold.

        Args:
            sample: the evaluated sample (its ground truth only scores the unabstained mask).
            prediction: the method's answer at the sample's resolution.
        """
        quality = round(float(self.estimator(sample, prediction)), 6)
        info = {**prediction.info, QUALITY: quality}
        if self.abstain_below is None:
            return Prediction(prediction.mask, prediction.boxes, info)
        abstained = quality < self.abstain_below
        info[ABSTAINED] = bool(abstained)
        if sample.mask is not None:
            info[DICE_WITHOUT_ABSTENTION] = float(dice_iou(prediction.mask, sample.mask)[0])
        if not abstained:
            return Prediction(prediction.mask, prediction.boxes, info)
        return Prediction(np.zeros_like(prediction.mask, dtype=bool), np.zeros((0, 4), np.float32), info)
