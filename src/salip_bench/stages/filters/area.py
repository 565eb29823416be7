"""Filter ``area``: drop background-like candidates whose area is at or above a threshold."""
from __future__ import annotations

import numpy as np

from salip_bench.accepts import ByKey, NumberIn, OneOf, Positive, check_settings
from salip_bench.registry import FILTERS
from salip_bench.types import Candidates

# max_area's rule depends on its unit: a fraction of the image, or pixels.
ACCEPTS = {"unit": OneOf("fraction", "pixels"),
           "max_area": ByKey("unit", "fraction", {"fraction": NumberIn(0.0, 1.0, low_open=True),
                                                   "pixels": Positive()})}


@FILTERS.register("area")
class AreaFilter:
    """Keep candidates with area strictly below ``max_area``.

    max_area: the threshold, in pixels when ``unit='pixels'`` or as a fraction of the image area
    when ``unit='fraction'`` (so one setting fits images of any size).
    """

    def __init__(self, max_area: float = 0.5, unit: str = "fraction") -> None:
        check_settings("filter", ACCEPTS, {"unit": unit, "max_area": max_area})
        self.max_area = max_area
        self.unit = unit

    def threshold_pixels(self, height: int, width: int) -> float:
        return self.max_area * height * width if self.unit == "fraction" else self.max_area

    def __call__(self, candidates: Candidates, image_size: tuple[int, int]) -> Candidates:
        keep = np.flatnonzero(candidates.areas < self.threshold_pixels(*image_size))
        # Nothing dropped: hand the candidates on instead of copying every full-resolution mask.
        return candidates if len(keep) == len(candidates) else candidates.select(keep)
