"""The one place that turns (image, candidate mask) into the picture CLIP looks at (paper Tab. 3).

Each function takes the RGB uint8 image, one boolean mask and its XYXY box (inclusive pixel
coordinates, as the generators produce) and returns an RGB uint8 array.
"""
from __future__ import annotations

import cv2
import numpy as np

RED = (255, 0, 0)  # images are RGB


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
    crop = image[rows, cols]
    # OpenCV's masked AND is the same product (a 0/1 mask) without numpy's broadcast temporary.
    return cv2.bitwise_and(crop, crop, mask=mask[rows, cols].view(np.uint8))


def expanded_crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """``crop_expand``: the unmasked image inside the box grown by ``margin`` × its size per side."""
    rows, cols = box_slices(box, *image.shape[:2], margin=margin)
    return image[rows, cols]


def line_width(image: np.ndarray, fraction: float) -> int:
    """A stroke width proportional to the image size, so prompts look alike at any resolution."""
    return max(1, int(round(fraction * max(image.shape[:2]))))


def red_box(image: np.ndarray, box: np.ndarray, thickness: float) -> np.ndarray:
    """``box``: the full image with a red rectangle around the mask's box."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return cv2.rectangle(image.copy(), (x0, y0), (x1, y1), RED, line_width(image, thickness))


def blurred_background(image: np.ndarray, sigma: float, grey: bool) -> np.ndarray:
    """What ``reverse_blur`` shows outside the box: the image Gaussian-blurred (sigma × longer side), maybe greyed."""
    background = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma * max(image.shape[:2]), 0.5))
    if grey:
        background = np.repeat(cv2.cvtColor(background, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return background


def reverse_blur(image: np.ndarray, box: np.ndarray, sigma: float, grey: bool,
                 background: np.ndarray | None = None) -> np.ndarray:
    """``reverse_blur``: the full image, blurred (and greyed) everywhere outside the mask's box.

    background: ``blurred_background(image, sigma, grey)`` if already computed (it is the same for
    every candidate of an image)."""
    picture = blurred_background(image, sigma, grey) if background is None else background.copy()
    rows, cols = box_slices(box, *image.shape[:2])
    picture[rows, cols] = image[rows, cols]
    return picture


def contour(image: np.ndarray, mask: np.ndarray, thickness: float) -> np.ndarray:
    """``contour``: the full image with the mask's outline drawn in red."""
    outlines, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(image.copy(), outlines, -1, RED, line_width(image, thickness))
