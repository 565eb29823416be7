"""Per-image Dice and IoU with torchmetrics, under one convention for empty masks.

Convention (also in summary.json): when the ground truth and the prediction are both empty the
sample scores Dice = IoU = 1 (nothing to find, nothing found); when exactly one is empty, 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

EMPTY_MASK_CONVENTION = "both GT and prediction empty: dice = iou = 1; exactly one empty: dice = iou = 0"


def dice_iou(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Binary Dice (= F1) and IoU of two (H, W) bool masks."""
    preds = torch.from_numpy(np.ascontiguousarray(prediction, dtype=bool)).flatten().long()
    target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=bool)).flatten().long()
    dice = binary_f1_score(preds, target_t, zero_division=1.0, validate_args=False)
    iou = binary_jaccard_index(preds, target_t, zero_division=1.0, validate_args=False)
    return float(dice), float(iou)
