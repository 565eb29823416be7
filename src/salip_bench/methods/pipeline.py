"""SaLIP, the paper's Fig. 2, as one function: generate → filter → retrieve → refine."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from salip_bench.types import Candidates, Retrieved

Generate = Callable[[np.ndarray], Candidates]
Filter = Callable[[Candidates, tuple[int, int]], Candidates]
Retrieve = Callable[[np.ndarray, Candidates], Retrieved]
Refine = Callable[[np.ndarray, Retrieved], np.ndarray]


@dataclass
class SalipResult:
    mask: np.ndarray  # (H, W) bool, the answer
    candidates: Candidates  # everything SAM proposed
    kept: Candidates  # what survived the filter
    retrieved: Retrieved  # what CLIP picked


def salip(image: np.ndarray, generate: Generate, keep: Filter, retrieve: Retrieve, refine: Refine) -> SalipResult:
    """Segment the organ in ``image`` (H, W, 3 uint8) zero-shot."""
    candidates = generate(image)  # SAM "segment everything": part masks from a point grid
    kept = keep(candidates, image.shape[:2])  # drop background-like (too large) masks
    retrieved = retrieve(image, kept)  # CLIP: visual prompts vs. the organ's text prototype, top-k
    mask = refine(image, retrieved)  # SAM again, prompted with the winners' boxes; union
    return SalipResult(mask, candidates, kept, retrieved)
