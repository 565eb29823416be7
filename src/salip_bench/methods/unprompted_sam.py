"""Method ``unprompted_sam``: SAM's mask decoder with no prompt at all (its default embeddings)."""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.engines.sam import SamV1Engine
from salip_bench.registry import METHODS, PluginError
from salip_bench.types import Prediction, Sample


@METHODS.register("unprompted_sam")
class UnpromptedSamMethod:
    """What SAM segments when told nothing: the no-point, no-box, no-mask decoder output.

    multimask_output: take the best of SAM's three masks by predicted IoU instead of its single
    mask. ``sam`` is injected.
    """

    info_columns = {"sam_predicted_iou": "float"}

    def __init__(self, sam: SamV1Engine, multimask_output: bool = False) -> None:
        if not isinstance(sam, SamV1Engine):  # SAM 2.1 / MedSAM engines offer box prompts, not this
            raise PluginError(f"method unprompted_sam runs SAM v1 only (model=sam_vit_b|l|h|sam_tiny), "
                              f"not {sam.identity.get('model')!r}")
        self.sam = sam
        self.multimask_output = multimask_output

    @torch.no_grad()
    def __call__(self, sample: Sample) -> Prediction:
        predictor = self.sam.prepared(sample.image)
        masks, scores, _ = predictor.predict(multimask_output=self.multimask_output)
        best = int(np.argmax(scores))
        return Prediction(mask=masks[best], info={"sam_predicted_iou": round(float(scores[best]), 5)})
