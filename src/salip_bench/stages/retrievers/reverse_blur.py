"""Retriever ``reverse_blur``: CLIP looks at the whole image, blurred and greyed outside the candidate's box."""
from __future__ import annotations

import numpy as np

from salip_bench.accepts import Flag, Positive
from salip_bench.stages.retrievers.clip_base import CLIP_ACCEPTS, Draw, register_visual_prompt
from salip_bench.stages.retrievers.visual_prompts import blurred_background, reverse_blur

# What this retriever accepts: batching (every CLIP retriever) and its visual prompt's parameters.
ACCEPTS = {**CLIP_ACCEPTS, "sigma": Positive(), "grey": Flag()}


def reverse_blur_prompt(image: np.ndarray, sigma: float = 0.02, grey: bool = True) -> Draw:
    """Visual prompt: the box sharp, the rest Gaussian-blurred with sigma = ``sigma`` × the longer
    image side and, if ``grey``, desaturated. Other kwargs: see :class:`ClipRetriever`."""
    background = blurred_background(image, sigma, grey)  # the same for every candidate: blurred once per image
    return lambda mask, box: reverse_blur(image, box, sigma, grey, background)


ReverseBlurRetriever = register_visual_prompt("reverse_blur", reverse_blur_prompt, ACCEPTS)
