"""Retriever ``crop``: CLIP looks at the mask-multiplied bounding-box crop (the paper's default)."""
from __future__ import annotations

import numpy as np

from salip_bench.stages.retrievers.clip_base import CLIP_ACCEPTS, Draw, register_visual_prompt
from salip_bench.stages.retrievers.visual_prompts import masked_crop

# What this retriever accepts: batching (every CLIP retriever) and its visual prompt's parameters.
ACCEPTS = {**CLIP_ACCEPTS}


def crop_prompt(image: np.ndarray) -> Draw:
    """Visual prompt: image × mask inside the mask's box. Other kwargs: see :class:`ClipRetriever`."""
    return lambda mask, box: masked_crop(image, mask, box)


CropRetriever = register_visual_prompt("crop", crop_prompt, ACCEPTS)
