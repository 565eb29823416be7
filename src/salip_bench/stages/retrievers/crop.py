"""Retriever ``crop``: CLIP looks at the mask-multiplied bounding-box crop (the paper's default)."""
from __future__ import annotations

import numpy as np

from salip_bench.registry import RETRIEVERS
from salip_bench.stages.retrievers.clip_base import ClipRetriever
from salip_bench.stages.retrievers.visual_prompts import masked_crop


@RETRIEVERS.register("crop")
class CropRetriever(ClipRetriever):
    """Visual prompt: image × mask inside the mask's box. Kwargs: see :class:`ClipRetriever`."""

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        return masked_crop(image, mask, box)
