"""Engine ``sam``: today's SAM v1 engine (``models/sam.py``) with the role methods stages call.

The v1 fast path (memoised predictor, disk cache, the generator's decoder) stays where it is;
``generators/sam_everything.py`` recognises this engine and keeps using it. This module adds only
what the role protocols need, so the ``sam_box`` refiner and the run summary treat SAM v1 like any
other engine.
"""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.engines.sam_v1 import SamEngine, build_sam
from salip_bench.registry import ENGINES


class SamV1Engine(SamEngine):
    """SAM v1 with the box-prompted role and a counters report; everything mode is the generator's
    own fast path (``generators/sam_everything.py``)."""

    def counters(self) -> dict[str, int]:
        return {"encoder_passes": self.encoder_passes}

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool) -> np.ndarray:
        """One mask per XYXY box (the best-scored of three when ``multimask_output``); (K, H, W) bool.

        The embedding comes from the memoising predictor: no encoder pass when the generator of
        this run already encoded ``image`` with this engine.
        """
        predictor = self.predictor
        predictor.set_image(image)
        out = np.zeros((len(boxes), *image.shape[:2]), bool)
        for i, box in enumerate(boxes):
            masks, scores, _ = predictor.predict(box=np.asarray(box, np.float32), multimask_output=multimask_output)
            out[i] = masks[int(np.argmax(scores))]
        return out


@ENGINES.register("sam")
def build_sam_engine(cfg: dict, weights: str, cache: FeatureCache | None = None) -> SamV1Engine:
    """SAM v1 from a ``conf/model/sam_*.yaml`` entry (``weights``: 'pretrained' | 'random')."""
    return build_sam(cfg, weights, cache, engine_class=SamV1Engine)  # type: ignore[return-value]
