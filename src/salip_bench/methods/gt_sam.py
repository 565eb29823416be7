"""Method ``gt_sam``: SAM prompted with ground-truth boxes, one per GT component (the upper bound)."""
from __future__ import annotations

import numpy as np

from salip_bench.masks import gt_boxes
from salip_bench.engines.sam import SamV1Engine
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.types import Candidates, Prediction, Retrieved, Sample
from salip_bench.registry import METHODS


def boxes_as_retrieved(boxes: np.ndarray, height: int, width: int) -> Retrieved:
    """Wrap prompt boxes so the box refiner can take them (no masks or scores behind them)."""
    n = len(boxes)
    candidates = Candidates(np.zeros((n, height, width), bool), boxes.astype(np.float32), np.zeros(n, np.int64),
                            np.zeros(n, np.float32), np.zeros(n, np.float32))
    return Retrieved(candidates, ["gt"] * n, np.ones(n, np.float32), np.arange(n))


@METHODS.register("gt_sam")
class GtSamMethod:
    """SAM's answer to a perfect box prompt: the best SAM can do once the organ is located.

    min_component_area: GT components smaller than this (pixels) get no box; multimask_output:
    as in :class:`~salip_bench.stages.refiners.sam_box.SamBoxRefiner`. ``sam`` is injected.
    """

    needs_ground_truth = True  # refused on unlabelled datasets before any model is built

    def __init__(self, sam: SamV1Engine, min_component_area: int = 16, multimask_output: bool = False) -> None:
        self.refiner = SamBoxRefiner(sam, multimask_output)
        self.min_component_area = min_component_area

    def __call__(self, sample: Sample) -> Prediction:
        if sample.mask is None:
            raise ValueError("gt_sam needs a ground-truth mask")
        boxes = gt_boxes(sample.mask, min_area=self.min_component_area)
        mask = self.refiner(sample.image, boxes_as_retrieved(boxes, *sample.image.shape[:2]))
        return Prediction(mask=mask, boxes=boxes, info={"n_gt_boxes": len(boxes)})
