"""Filter ``area``: drop background-like candidates whose area is at or above a threshold."""
from __future__ import annotations

import numpy as np

from salip_bench.registry import FILTERS
from salip_bench.types import Candidates


@FILTERS.register("area")
class AreaFilter:
    """Keep candidates with area strictly below ``max_area``.

    max_area: the threshold, in pixels when ``unit='pixels'`` or as a fraction of the image area
    when ``unit='fraction'`` (so one setting fits images of any size).
    """

    def __init__(self, max_area: float = 0.5, unit: str = "fraction") -> None:
        if unit not in ("pixels", "fraction"):
            raise ValueError(f"filter area: unit must be 'pixels' or 'fraction', got {unit!r}")
        if unit == "fraction" and not 0 < max_area <= 1:
            raise ValueError(f"filter area: a fraction max_area must be in (0, 1], got {max_area}")
        self.max_area = max_area
        self.unit = unit

    def threshold_pixels(self, height: int, width: int) -> float:
        return self.max_area * height * width if self.unit == "fraction" else self.max_area

    def __call__(self, candidates: Candidates, image_size: tuple[int, int]) -> Candidates:
        keep = np.flatnonzero(candidates.areas < self.threshold_pixels(*image_size))
        # Nothing dropped: hand the candidates on instead of copying every full-resolution mask.
        return candidates if len(keep) == len(candidates) else candidates.select(keep)
