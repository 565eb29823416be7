"""The one place that turns (image, candidate mask) into the picture CLIP looks at.

Each function takes the RGB uint8 image, one boolean mask and its XYXY box (inclusive pixel
coordinates, as the generators produce) and returns an RGB uint8 array.
"""
from __future__ import annotations

import numpy as np


def box_slices(box: np.ndarray, height: int, width: int, margin: float = 0.0) -> tuple[slice, slice]:
    """Row/column slices of ``box`` grown by ``margin`` × its size on each side, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    left, top = max(int(np.floor(x0 - dx)), 0), max(int(np.floor(y0 - dy)), 0)
    right, bottom = min(int(np.ceil(x1 + dx)) + 1, width), min(int(np.ceil(y1 + dy)) + 1, height)
    return slice(top, max(bottom, top + 1)), slice(left, max(right, left + 1))


def masked_crop(image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The paper's ``crop``: the image multiplied by the mask, cut to the mask's bounding box."""
    rows, cols = box_slices(box, *image.shape[:2])
    return image[rows, cols] * mask[rows, cols, None].astype(image.dtype)
