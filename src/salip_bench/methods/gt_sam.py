"""Method ``gt_sam``: SAM prompted with ground-truth boxes, one per GT component (the upper bound)."""
from __future__ import annotations

from salip_bench.accepts import Flag, IntAtLeast, check_settings
from salip_bench.engines.roles import BoxPromptSegmenter
from salip_bench.masks import gt_boxes
from salip_bench.qc.signals import SAM_PRED_IOU, SAM_SIGNALS, SAM_STABILITY, number
from salip_bench.registry import METHODS
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.types import Prediction, Sample

ACCEPTS = {"min_component_area": IntAtLeast(0), "multimask_output": Flag()}


@METHODS.register("gt_sam")
class GtSamMethod:
    """SAM's answer to a perfect box prompt: the best SAM can do once the organ is located.

    min_component_area: GT components smaller than this (pixels) get no box; multimask_output:
    as in :class:`~salip_bench.stages.refiners.sam_box.SamBoxRefiner`. ``sam`` is injected.
    """

    needs_ground_truth = True  # refused on unlabelled datasets before any model is built
    info_columns = {"n_gt_boxes": "int"}
    qc_signals = SAM_SIGNALS  # SAM's own confidence in its mask (salip_bench.qc)
    default_qc = "sam_iou"

    def __init__(self, sam: BoxPromptSegmenter, min_component_area: int = 16, multimask_output: bool = False) -> None:
        check_settings("method", ACCEPTS, {"min_component_area": min_component_area,
                                           "multimask_output": multimask_output})
        self.refiner = SamBoxRefiner(sam, multimask_output)
        self.min_component_area = min_component_area

    def __call__(self, sample: Sample) -> Prediction:
        if sample.mask is None:
            raise ValueError("gt_sam needs a ground-truth mask")
        boxes = gt_boxes(sample.mask, min_area=self.min_component_area)
        # boxes, not retrieved candidates: no masks behind them
        mask, scores = self.refiner.refine_scored(sample.image, boxes)
        return Prediction(mask=mask, boxes=boxes, info={"n_gt_boxes": len(boxes),
                                                        SAM_PRED_IOU: number(scores["predicted_iou"]),
                                                        SAM_STABILITY: number(scores["stability"])})
