"""Refiner ``sam_box``: prompt SAM with the retrieved masks' bounding boxes; union of its masks."""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.models.sam import SamEngine
from salip_bench.registry import REFINERS
from salip_bench.types import Retrieved


@REFINERS.register("sam_box")
class SamBoxRefiner:
    """One single-mask SAM prediction per retrieved box, OR-ed together.

    multimask_output: ask SAM for three masks per box and keep the one with the best predicted IoU
    (the paper uses a single mask, ``False``). ``sam`` is injected; its predictor already holds the
    embedding the generator computed for this image, so no encoder pass is spent here.
    """

    def __init__(self, sam: SamEngine, multimask_output: bool = False) -> None:
        self.sam = sam
        self.multimask_output = multimask_output

    @torch.no_grad()
    def __call__(self, image: np.ndarray, retrieved: Retrieved) -> np.ndarray:
        height, width = image.shape[:2]
        union = np.zeros((height, width), bool)
        if len(retrieved.candidates) == 0:
            return union
        predictor = self.sam.predictor
        predictor.set_image(image)  # memo hit when the generator encoded this image
        for box in retrieved.candidates.boxes:
            masks, scores, _ = predictor.predict(box=np.asarray(box, np.float32),
                                                 multimask_output=self.multimask_output)
            union |= masks[int(np.argmax(scores))]
        return union
