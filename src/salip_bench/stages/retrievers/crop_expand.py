"""Retriever ``crop_expand``: CLIP looks at the unmasked box crop, grown by a margin (context)."""
from __future__ import annotations

import numpy as np

from salip_bench.accepts import NumberIn
from salip_bench.stages.retrievers.clip_base import CLIP_ACCEPTS, Draw, register_visual_prompt
from salip_bench.stages.retrievers.visual_prompts import expanded_crop

# What this retriever accepts: batching (every CLIP retriever) and its visual prompt's parameters.
ACCEPTS = {**CLIP_ACCEPTS, "margin": NumberIn(0.0, 1e9)}


def crop_expand_prompt(image: np.ndarray, margin: float = 0.1) -> Draw:
    """Visual prompt: the image inside the mask's box enlarged by ``margin`` × its size on each side.
    Other kwargs: see :class:`ClipRetriever`."""
    return lambda mask, box: expanded_crop(image, box, margin)


CropExpandRetriever = register_visual_prompt("crop_expand", crop_expand_prompt, ACCEPTS)
