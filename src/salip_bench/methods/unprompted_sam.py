"""Method ``unprompted_sam``: SAM's mask decoder with no prompt at all (its default embeddings)."""
from __future__ import annotations

from salip_bench.engines.roles import UnpromptedSegmenter, require_role
from salip_bench.qc.signals import SAM_PRED_IOU, SAM_SIGNALS, SAM_STABILITY, number
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample


@METHODS.register("unprompted_sam")
class UnpromptedSamMethod:
    """What SAM segments when told nothing: the no-point, no-box, no-mask decoder output.

    multimask_output: take the best of SAM's three masks by predicted IoU instead of its single
    mask. ``sam`` is injected.
    """

    info_columns = {"sam_predicted_iou": "float"}
    qc_signals = SAM_SIGNALS  # SAM's own confidence in its mask (salip_bench.qc)
    default_qc = "sam_iou"

    def __init__(self, sam: UnpromptedSegmenter, multimask_output: bool = False) -> None:
        # SAM 2.1 / MedSAM engines offer box prompts, not this
        require_role(sam, UnpromptedSegmenter, "method unprompted_sam", "SAM v1: model=sam_vit_b|l|h|sam_tiny")
        self.sam = sam
        self.multimask_output = multimask_output

    def __call__(self, sample: Sample) -> Prediction:
        mask, score, stability = self.sam.segment_unprompted(sample.image, self.multimask_output)
        return Prediction(mask=mask, info={"sam_predicted_iou": round(score, 5), SAM_PRED_IOU: number(score),
                                           SAM_STABILITY: number(stability)})
