"""Refiner ``none``: the retrieved masks themselves are the answer (SAM+CLIP ablation, paper Tab. 5)."""
from __future__ import annotations

import numpy as np

from salip_bench.registry import REFINERS
from salip_bench.types import Retrieved


@REFINERS.register("none")
class NoRefiner:
    """Union of the retrieved candidate masks, without a second SAM pass."""

    def __call__(self, image: np.ndarray, retrieved: Retrieved) -> np.ndarray:
        union = np.zeros(image.shape[:2], bool)
        for mask in retrieved.candidates.masks:
            union |= mask
        return union
