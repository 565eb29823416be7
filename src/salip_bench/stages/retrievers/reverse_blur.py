"""Retriever ``reverse_blur``: CLIP looks at the whole image, blurred and greyed outside the candidate's box."""
from __future__ import annotations

import numpy as np

from salip_bench.engines.clip import ClipEngine
from salip_bench.registry import RETRIEVERS
from salip_bench.types import Candidates
from salip_bench.stages.retrievers.clip_base import ClipRetriever
from salip_bench.stages.retrievers.visual_prompts import blurred_background, reverse_blur


@RETRIEVERS.register("reverse_blur")
class ReverseBlurRetriever(ClipRetriever):
    """Visual prompt: the box sharp, the rest Gaussian-blurred with sigma = ``sigma`` × the longer
    image side and, if ``grey``, desaturated. Other kwargs: see :class:`ClipRetriever`."""

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, workers: int | None = None, sigma: float = 0.02, grey: bool = True) -> None:
        super().__init__(clip, class_prompts, top_k, batch_size, workers)
        self.sigma, self.grey = sigma, grey
        self._blurred: tuple[np.ndarray, np.ndarray] | None = None  # (image, its blurred background)

    def scores(self, image: np.ndarray, candidates: Candidates) -> np.ndarray:
        # The blurred background is the same for every candidate: blur once per image, not once per candidate.
        self._blurred = (image, blurred_background(image, self.sigma, self.grey))
        try:
            return super().scores(image, candidates)
        finally:
            self._blurred = None

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        background = self._blurred[1] if self._blurred is not None and self._blurred[0] is image else None
        return reverse_blur(image, box, self.sigma, self.grey, background)
