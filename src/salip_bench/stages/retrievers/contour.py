"""Retriever ``contour``: CLIP looks at the whole image with the candidate's outline drawn on it."""
from __future__ import annotations

import numpy as np

from salip_bench.engines.clip import ClipEngine
from salip_bench.registry import RETRIEVERS
from salip_bench.stages.retrievers.clip_base import ClipRetriever
from salip_bench.stages.retrievers.visual_prompts import contour


@RETRIEVERS.register("contour")
class ContourRetriever(ClipRetriever):
    """Visual prompt: full image, red mask outline of width ``thickness`` × the longer image side.
    Other kwargs: see :class:`ClipRetriever`."""

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, workers: int | None = None, thickness: float = 0.005) -> None:
        super().__init__(clip, class_prompts, top_k, batch_size, workers)
        self.thickness = thickness

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        return contour(image, mask, self.thickness)
