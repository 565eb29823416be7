"""Method ``unprompted_sam``: SAM's mask decoder with no prompt at all (its default embeddings)."""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.engines.box_scores import stability_score
from salip_bench.engines.sam import SamV1Engine
from salip_bench.qc.signals import SAM_PRED_IOU, SAM_SIGNALS, SAM_STABILITY, number
from salip_bench.registry import METHODS, PluginError
from salip_bench.types import Prediction, Sample


@METHODS.register("unprompted_sam")
class UnpromptedSamMethod:
    """What SAM segments when told nothing: the no-point, no-box, no-mask decoder output.

    multimask_output: take the best of SAM's three masks by predicted IoU instead of its single
    mask. ``sam`` is injected.
    """

    qc_signals = SAM_SIGNALS  # SAM's own confidence in its mask (salip_bench.qc)
    default_qc = "sam_iou"

    def __init__(self, sam: SamV1Engine, multimask_output: bool = False) -> None:
        if not isinstance(sam, SamV1Engine):  # SAM 2.1 / MedSAM engines offer box prompts, not this
            raise PluginError(f"method unprompted_sam runs SAM v1 only (model=sam_vit_b|l|h|sam_tiny), "
                              f"not {sam.identity.get('model')!r}")
        self.sam = sam
        self.multimask_output = multimask_output

    @torch.no_grad()
    def __call__(self, sample: Sample) -> Prediction:
        predictor = self.sam.prepared(sample.image)
        logits, scores, _ = predictor.predict(multimask_output=self.multimask_output, return_logits=True)
        best, threshold = int(np.argmax(scores)), self.sam.sam.mask_threshold
        return Prediction(mask=logits[best] > threshold,  # upstream's mask, thresholded here to keep the logits
                          info={"sam_predicted_iou": round(float(scores[best]), 5),
                                SAM_PRED_IOU: number(scores[best]),
                                SAM_STABILITY: number(stability_score(logits[best], threshold))})
