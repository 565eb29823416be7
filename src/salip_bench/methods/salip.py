"""Method ``salip``: the zero-shot pipeline assembled from the generator/filter/retriever/refiner groups."""
from __future__ import annotations

from functools import partial

import numpy as np

from salip_bench.methods.pipeline import Filter, Generate, Refine, Retrieve, SalipResult, salip
from salip_bench.methods.quality_signals import salip_signals, scored_refine
from salip_bench.metrics import dice_iou, greedy_oracle
from salip_bench.qc.signals import SALIP_SIGNALS
from salip_bench.registry import METHODS
from salip_bench.storage.content_keys import array_key
from salip_bench.types import Candidates, Prediction, Sample


@METHODS.register("salip")
class SalipMethod:
    """SaLIP with the stage plugins chosen by the ``generator``, ``filter``, ``retriever`` and
    ``refiner`` config groups (all four injected, built from their yaml files).

    With a ground truth at hand it also records where each stage left the answer, for failure
    attribution: ``oracle_dice`` (best union of as many kept candidates as the retriever picks:
    what a perfect retriever would get) and ``retrieved_dice`` (the retrieved masks before refinement).
    """

    needs_prompts = True  # retrieves with the organ's sentences: dataset.prompts must be set
    # The results.csv columns of Prediction.info (every method's are written for every run: one column set).
    info_columns = {"n_candidates": "int", "n_kept": "int", "retrieved_classes": "json", "retrieved_scores": "json",
                    "retrieved_boxes": "json", "oracle_dice": "float", "retrieved_dice": "float"}
    qc_signals = SALIP_SIGNALS  # label-free signals it records (salip_bench.qc)
    default_qc = "salip"

    def __init__(self, generator: Generate, filter: Filter, retriever: Retrieve, refiner: Refine,
                 top_k: dict[str, int]) -> None:
        self.generator, self.filter, self.retriever, self.refiner = generator, filter, retriever, refiner
        self.top_k = top_k

    def __call__(self, sample: Sample) -> Prediction:
        refined: dict = {}  # SAM's confidence in the refined mask, for the quality estimators
        refine = scored_refine(self.refiner, refined)
        organ = sample.meta.get("organ")
        if organ is None:
            result = salip(sample.image, self.generator, self.filter, self.retriever, refine)
        else:  # one organ of a multi-organ run: the slice's candidates and their CLIP embeddings are shared
            result = salip(sample.image, self.shared_generate, self.shared_keep,
                           partial(self.retriever, classes=[organ]), refine)
        retrieved = result.retrieved
        info = {"n_candidates": len(result.candidates), "n_kept": len(result.kept),
                "retrieved_classes": retrieved.classes,
                "retrieved_scores": np.round(retrieved.scores, 5).tolist(),
                "retrieved_boxes": np.round(retrieved.candidates.boxes, 1).tolist()}
        info.update(salip_signals(result, refined))
        if sample.mask is not None:
            k = self.top_k[organ] if organ is not None else sum(self.top_k.values())
            info.update(stage_scores(result, sample.mask, k))
        return Prediction(mask=result.mask, boxes=retrieved.candidates.boxes, info=info)

    # The expensive passes of one slice, kept for its next organ (organs of a slice are consecutive
    # samples): SAM's "segment everything" proposals, the filter's choice among them, and (in the
    # retriever, keyed by the same objects) the candidates' CLIP embeddings.
    def shared_generate(self, image: np.ndarray) -> Candidates:
        key = array_key(image)
        memo = getattr(self, "_slice_memo", None)
        if memo is None or memo[0] != key:
            candidates = self.generator(image)
            self._slice_memo = memo = (key, image, candidates, self.filter(candidates, image.shape[:2]))
        return memo[2]

    def shared_keep(self, candidates: Candidates, shape: tuple[int, int]) -> Candidates:
        memo = self._slice_memo
        return memo[3] if memo[2] is candidates else self.filter(candidates, shape)


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
