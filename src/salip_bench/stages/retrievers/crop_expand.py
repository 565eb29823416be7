"""Retriever ``crop_expand``: CLIP looks at the unmasked box crop, grown by a margin (context)."""
from __future__ import annotations

import numpy as np

from salip_bench.engines.clip import ClipEngine
from salip_bench.registry import RETRIEVERS
from salip_bench.stages.retrievers.clip_base import ClipRetriever
from salip_bench.stages.retrievers.visual_prompts import expanded_crop


@RETRIEVERS.register("crop_expand")
class CropExpandRetriever(ClipRetriever):
    """Visual prompt: the image inside the mask's box enlarged by ``margin`` × its size on each side.
    Other kwargs: see :class:`ClipRetriever`."""

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, workers: int | None = None, margin: float = 0.1) -> None:
        super().__init__(clip, class_prompts, top_k, batch_size, workers)
        self.margin = margin

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        return expanded_crop(image, box, self.margin)
