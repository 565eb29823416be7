"""Method ``precomputed``: scores masks another tool already produced (nnU-Net, TotalSegmentator, MedSAM)
in the same tables, statistics and report as every other method."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample


@METHODS.register("precomputed")
class PrecomputedMethod:
    """A folder of label maps (volume datasets: ``<case>.nii.gz`` …) or masks (2D: ``<image stem>.png``),
    with its own label table, read for each sample by the injected ``read_prediction`` (the dataset
    layer's :class:`~salip_bench.datasets.predictions.PredictionReader`, built from this method's keys).

    dir: the predictions' folder; labels: their label table (JSON {value: name}; null: the dataset's
    values); pattern: file name with ``{case}`` / ``{stem}`` (null: the usual endings).
    """

    def __init__(self, read_prediction: Callable[[Sample], np.ndarray], dir: str, labels: str | None = None,
                 pattern: str | None = None) -> None:
        self.read_prediction = read_prediction

    def __call__(self, sample: Sample) -> Prediction:
        mask = np.asarray(self.read_prediction(sample), bool)
        if mask.shape != sample.image.shape[:2]:
            raise ValueError(f"prediction shape {mask.shape} != image shape {sample.image.shape[:2]}")
        return Prediction(mask=mask)
