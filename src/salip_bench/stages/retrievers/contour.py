"""Retriever ``contour``: CLIP looks at the whole image with the candidate's outline drawn on it."""
from __future__ import annotations

import numpy as np

from salip_bench.accepts import NumberIn
from salip_bench.stages.retrievers.clip_base import CLIP_ACCEPTS, Draw, register_visual_prompt
from salip_bench.stages.retrievers.visual_prompts import contour

# What this retriever accepts: batching (every CLIP retriever) and its visual prompt's parameters.
ACCEPTS = {**CLIP_ACCEPTS, "thickness": NumberIn(0.0, 1.0, low_open=True, high_open=True)}


def contour_prompt(image: np.ndarray, thickness: float = 0.005) -> Draw:
    """Visual prompt: full image, red mask outline of width ``thickness`` × the longer image side.
    Other kwargs: see :class:`ClipRetriever`."""
    return lambda mask, box: contour(image, mask, thickness)


ContourRetriever = register_visual_prompt("contour", contour_prompt, ACCEPTS)
