"""What a quality estimator is: a plugin that scores a prediction in [0, 1] from label-free signals.

A quality estimator is registered in :data:`salip_bench.registry.QC` (``conf/qc/<name>.yaml``) and
called with the sample (its image; the ground truth is never read) and the method's prediction,
whose ``info`` holds the method's ``qc_*`` signals (:mod:`salip_bench.qc.signals`). It declares the
signals it needs (``requires``): a method that cannot give them is refused before anything runs.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from salip_bench.types import Prediction, Sample

QUALITY = "quality"
ABSTAINED = "abstained"
DICE_WITHOUT_ABSTENTION = "dice_without_abstention"
QC_COLUMNS = (QUALITY, ABSTAINED, DICE_WITHOUT_ABSTENTION)
NO_SIGNAL_QUALITY = 0.0  # quality of a prediction with no usable signal (no candidates): never NaN


class QualityEstimator:
    """Base of the built-in estimators: ``requires`` names the signals (``qc_*`` info keys) it reads.

    Subclasses implement :meth:`estimate`; :meth:`__call__` clips the result to [0, 1] and maps an
    undefined value (NaN, None: a degenerate signal) to :data:`NO_SIGNAL_QUALITY`.
    """

    requires: tuple[str, ...] = ()

    def estimate(self, sample: Sample, prediction: Prediction) -> float | None:
        """The raw quality (may be None or NaN when the signals are missing)."""
        raise NotImplementedError

    def __call__(self, sample: Sample, prediction: Prediction) -> float:
        value = self.estimate(sample, prediction)
        if value is None or not math.isfinite(float(value)):
            return NO_SIGNAL_QUALITY
        return min(1.0, max(0.0, float(value)))


def signal(prediction: Prediction, name: str) -> float | None:
    """The finite number ``prediction.info[name]``, else None."""
    value = prediction.info.get(name)
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fitting(requires: Iterable[str], offered: Iterable[str]) -> bool:
    """Whether an estimator needing ``requires`` fits a method offering the signals ``offered``."""
    return set(requires) <= set(offered)
