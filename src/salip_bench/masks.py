"""Boxes from ground-truth masks, for baselines that prompt SAM with the true object extent."""
from __future__ import annotations

import cv2
import numpy as np


def gt_boxes(mask: np.ndarray, min_area: int = 16, connectivity: int = 8) -> np.ndarray:
    """One XYXY box per connected component of ``mask``, largest component first.

    Args:
        mask: (H, W) bool or 0/non-zero.
        min_area: components with fewer pixels are ignored (stray annotation specks would
            otherwise each become a prompt).
        connectivity: 4 or 8.

    Returns:
        (K, 4) float32 boxes in inclusive pixel coordinates (x0, y0, x1, y1), the convention of
        the generators' boxes; (0, 4) when no component is large enough.
    """
    binary = np.ascontiguousarray(mask, dtype=bool).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=connectivity)
    stats = stats[1:]  # label 0 is the background
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= min_area]
    stats = stats[np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")]
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    return np.stack([x, y, x + w - 1, y + h - 1], axis=1).astype(np.float32).reshape(-1, 4)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(1, 4) float32 XYXY box around all of ``mask``'s foreground, in inclusive pixel coordinates as
    :func:`gt_boxes`; (0, 4) when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.zeros((0, 4), np.float32)
    return np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.float32)
