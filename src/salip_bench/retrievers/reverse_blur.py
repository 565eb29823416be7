"""Retriever ``reverse_blur``: CLIP looks at the whole image, blurred and greyed outside the candidate's box."""
from __future__ import annotations

import numpy as np

from salip_bench.models.clip import ClipEngine
from salip_bench.registry import RETRIEVERS
from salip_bench.retrievers.clip_base import ClipRetriever
from salip_bench.retrievers.visual_prompts import reverse_blur


@RETRIEVERS.register("reverse_blur")
class ReverseBlurRetriever(ClipRetriever):
    """Visual prompt: the box sharp, the rest Gaussian-blurred with sigma = ``sigma`` × the longer
    image side and, if ``grey``, desaturated. Other kwargs: see :class:`ClipRetriever`."""

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, sigma: float = 0.02, grey: bool = True) -> None:
        super().__init__(clip, class_prompts, top_k, batch_size)
        self.sigma, self.grey = sigma, grey

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        return reverse_blur(image, box, self.sigma, self.grey)
