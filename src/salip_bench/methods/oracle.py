"""Method ``oracle``: SaLIP with a perfect retriever (the candidates that best match the GT).

Its gap to ``gt_sam`` measures generator misses, its gap to ``salip`` retriever misses
(the two failure classes of the paper's Sec. 4.3.1).
"""
from __future__ import annotations

import numpy as np

from salip_bench.methods.pipeline import Filter, Generate, Refine, salip
from salip_bench.methods.salip import stage_scores
from salip_bench.metrics import greedy_oracle
from salip_bench.registry import METHODS
from salip_bench.types import Candidates, Prediction, Retrieved, Sample


class OracleRetriever:
    """Retrieves the (up to) ``k`` candidates whose union best overlaps ``target``."""

    def __init__(self, target: np.ndarray, k: int) -> None:
        self.target, self.k = target, k

    def __call__(self, image: np.ndarray, candidates: Candidates) -> Retrieved:
        index = greedy_oracle(candidates.masks, self.target, self.k)
        return Retrieved(candidates.select(index), ["oracle"] * len(index), np.ones(len(index), np.float32), index)


@METHODS.register("oracle")
class OracleMethod:
    """Generator, filter and refiner from their groups; retrieval by ground truth (a retriever built
    per sample from its mask) with as many candidates as the dataset's top-k allows in total.
    ``generator``, ``filter``, ``refiner`` and ``top_k`` are injected."""

    needs_ground_truth = True  # refused on unlabelled datasets before any model is built
    info_columns = {"n_candidates": "int", "n_kept": "int", "oracle_dice": "float", "retrieved_dice": "float"}
    qc_signals = ()  # its retrieval reads the ground truth: nothing it does is label-free
    qc_note = "its retrieval reads the ground truth, so no label-free quality exists"

    def __init__(self, generator: Generate, filter: Filter, refiner: Refine,
                 top_k: dict[str, int]) -> None:
        self.generator, self.filter, self.refiner = generator, filter, refiner
        self.k = sum(top_k.values())

    def __call__(self, sample: Sample) -> Prediction:
        if sample.mask is None:
            raise ValueError("oracle needs a ground-truth mask")
        result = salip(sample.image, self.generator, self.filter, OracleRetriever(sample.mask, self.k), self.refiner)
        return Prediction(mask=result.mask, boxes=result.retrieved.candidates.boxes,
                          info={"n_candidates": len(result.candidates), "n_kept": len(result.kept),
                                **stage_scores(result, sample.mask, self.k)})
