"""Retriever ``box``: CLIP looks at the whole image with a red rectangle around the candidate."""
from __future__ import annotations

import numpy as np

from salip_bench.accepts import NumberIn
from salip_bench.stages.retrievers.clip_base import CLIP_ACCEPTS, Draw, register_visual_prompt
from salip_bench.stages.retrievers.visual_prompts import red_box

# What this retriever accepts: batching (every CLIP retriever) and its visual prompt's parameters.
ACCEPTS = {**CLIP_ACCEPTS, "thickness": NumberIn(0.0, 1.0, low_open=True, high_open=True)}


def box_prompt(image: np.ndarray, thickness: float = 0.01) -> Draw:
    """Visual prompt: full image, red box of width ``thickness`` × the image's longer side.
    Other kwargs: see :class:`ClipRetriever`."""
    return lambda mask, box: red_box(image, box, thickness)


RedBoxRetriever = register_visual_prompt("box", box_prompt, ACCEPTS)
