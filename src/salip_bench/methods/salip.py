"""Method ``salip``: the zero-shot pipeline assembled from the generator/filter/retriever/refiner groups."""
from __future__ import annotations

import numpy as np

from salip_bench.pipeline import Filter, Generate, Refine, Retrieve, salip
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample


@METHODS.register("salip")
class SalipMethod:
    """SaLIP with the stage plugins chosen by the ``generator``, ``filter``, ``retriever`` and
    ``refiner`` config groups (all four injected, built from their yaml files)."""

    def __init__(self, generator: Generate, filter: Filter, retriever: Retrieve, refiner: Refine) -> None:  # noqa: A002
        self.generator, self.filter, self.retriever, self.refiner = generator, filter, retriever, refiner

    def __call__(self, sample: Sample) -> Prediction:
        result = salip(sample.image, self.generator, self.filter, self.retriever, self.refiner)
        retrieved = result.retrieved
        return Prediction(mask=result.mask, boxes=retrieved.candidates.boxes, info={
            "n_candidates": len(result.candidates),
            "n_kept": len(result.kept),
            "retrieved_classes": retrieved.classes,
            "retrieved_scores": np.round(retrieved.scores, 5).tolist(),
            "retrieved_boxes": np.round(retrieved.candidates.boxes, 1).tolist(),
        })
