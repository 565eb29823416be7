"""Filter ``none``: keep every candidate (the paper's "no area filtering" ablation, Tab. 6)."""
from __future__ import annotations

from salip_bench.registry import FILTERS
from salip_bench.types import Candidates


@FILTERS.register("none")
class NoFilter:
    """Pass all candidates through unchanged."""

    def __call__(self, candidates: Candidates, image_size: tuple[int, int]) -> Candidates:
        return candidates
