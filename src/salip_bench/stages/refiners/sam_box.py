"""Refiner ``sam_box``: prompt SAM with the retrieved masks' bounding boxes; union of its masks."""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.engines.roles import BoxPromptSegmenter, require_role
from salip_bench.registry import REFINERS
from salip_bench.types import Retrieved


@REFINERS.register("sam_box")
class SamBoxRefiner:
    """One single-mask box-prompted prediction per retrieved box, OR-ed together.

    multimask_output: ask for three masks per box and keep the one with the best predicted IoU
    (the paper uses a single mask, ``False``). ``sam`` is injected: any engine with the box role
    (SAM v1, SAM 2.1, MedSAM; ``model@refiner_model=NAME`` picks one for this stage). When it is the
    generator's engine, it already holds this image's embedding, so no encoder pass is spent here.
    """

    def __init__(self, sam: BoxPromptSegmenter, multimask_output: bool = False) -> None:
        require_role(sam, BoxPromptSegmenter, "refiner sam_box")
        self.sam = sam
        self.multimask_output = multimask_output

    def __call__(self, image: np.ndarray, retrieved: Retrieved) -> np.ndarray:
        return self.segment_boxes(image, retrieved.candidates.boxes)

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(H, W) bool union of SAM's masks for ``boxes`` ((K, 4) XYXY inclusive; none: empty mask)."""
        if len(boxes) == 0:
            return np.zeros(image.shape[:2], bool)
        return self.sam.segment_boxes(image, np.asarray(boxes, np.float32), self.multimask_output).any(axis=0)

    @torch.no_grad()
    def refine_scored(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, dict[str, float | None]]:
        """:meth:`segment_boxes` with SAM's own confidence in the refined mask, for the quality
        estimators: ``predicted_iou`` and ``stability``, each the mean over the boxes' masks weighted
        by their areas (plain mean when all are empty); None for no box or an engine without scores.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (K, 4) XYXY inclusive.
        """
        unscored = {"predicted_iou": None, "stability": None}
        if len(boxes) == 0:
            return self.segment_boxes(image, boxes), unscored
        try:
            out = self.sam.segment_boxes(image, np.asarray(boxes, np.float32), self.multimask_output, True)
        except TypeError:  # an engine whose segment_boxes has no with_scores: its masks, without scores
            return self.segment_boxes(image, boxes), unscored
        areas = out.masks.reshape(len(boxes), -1).sum(axis=1).astype(np.float64)
        weights = areas if areas.sum() > 0 else np.ones(len(boxes))
        return out.masks.any(axis=0), {"predicted_iou": float(np.average(out.predicted_iou, weights=weights)),
                                       "stability": float(np.average(out.stability, weights=weights))}
