"""Method ``salip``: the zero-shot pipeline assembled from the generator/filter/retriever/refiner groups."""
from __future__ import annotations

import numpy as np

from salip_bench.metrics import dice_iou, greedy_oracle
from salip_bench.methods.pipeline import Filter, Generate, Refine, Retrieve, SalipResult, salip
from salip_bench.methods.quality_signals import salip_signals, scored_refine
from salip_bench.qc.signals import SALIP_SIGNALS
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample


@METHODS.register("salip")
class SalipMethod:
    """SaLIP with the stage plugins chosen by the ``generator``, ``filter``, ``retriever`` and
    ``refiner`` config groups (all four injected, built from their yaml files).

    With a ground truth at hand it also records where each stage left the answer, for failure
    attribution: ``oracle_dice`` (best union of as many kept candidates as the retriever picks:
    what a perfect retriever would get) and ``retrieved_dice`` (the retrieved masks before refinement).
    """

    needs_prompts = True  # retrieves with the organ's sentences: dataset.prompts must be set
    qc_signals = SALIP_SIGNALS  # label-free signals it records (salip_bench.qc)
    default_qc = "salip"

    def __init__(self, generator: Generate, filter: Filter, retriever: Retrieve, refiner: Refine,  # noqa: A002
                 top_k: dict[str, int]) -> None:
        self.generator, self.filter, self.retriever, self.refiner = generator, filter, retriever, refiner
        self.top_k = top_k

    def __call__(self, sample: Sample) -> Prediction:
        refined: dict = {}  # SAM's confidence in the refined mask, for the quality estimators
        result = salip(sample.image, self.generator, self.filter, self.retriever, scored_refine(self.refiner, refined))
        retrieved = result.retrieved
        info = {"n_candidates": len(result.candidates), "n_kept": len(result.kept),
                "retrieved_classes": retrieved.classes,
                "retrieved_scores": np.round(retrieved.scores, 5).tolist(),
                "retrieved_boxes": np.round(retrieved.candidates.boxes, 1).tolist()}
        info.update(salip_signals(result, refined))
        if sample.mask is not None:
            info.update(stage_scores(result, sample.mask, sum(self.top_k.values())))
        return Prediction(mask=result.mask, boxes=retrieved.candidates.boxes, info=info)


def stage_scores(result: SalipResult, target: np.ndarray, k: int) -> dict:
    """Where each stage left the answer: ``oracle_dice`` (the best union of ``k`` kept candidates) and
    ``retrieved_dice`` (the retrieved masks before refinement).

    Args:
        result: one run of :func:`~salip_bench.methods.pipeline.salip`.
        target: (H, W) bool ground truth.
        k: candidates a perfect retriever may pick (the total top-k over the classes).
    """
    kept = result.kept
    oracle = greedy_oracle(kept.masks, target, k)
    oracle_mask = kept.masks[oracle].any(axis=0) if len(oracle) else np.zeros_like(target)
    retrieved_mask = (result.retrieved.candidates.masks.any(axis=0) if len(result.retrieved.candidates)
                      else np.zeros_like(target))
    return {"oracle_dice": round(dice_iou(oracle_mask, target)[0], 6),
            "retrieved_dice": round(dice_iou(retrieved_mask, target)[0], 6)}
