"""Per-image Dice and IoU with torchmetrics, under one convention for empty masks.

Convention (also in summary.json): when the ground truth and the prediction are both empty the
sample scores Dice = IoU = 1 (nothing to find, nothing found); when exactly one is empty, 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

EMPTY_MASK_CONVENTION = "both GT and prediction empty: dice = iou = 1; exactly one empty: dice = iou = 0"


def confusion_counts(prediction: np.ndarray, target: np.ndarray) -> dict[str, int]:
    """True/false positives and false negatives: summed over slices they give a volume's 3D Dice."""
    prediction, target = prediction.astype(bool), target.astype(bool)
    return {"tp": int(np.count_nonzero(prediction & target)), "fp": int(np.count_nonzero(prediction & ~target)),
            "fn": int(np.count_nonzero(~prediction & target))}


def dice_iou_from_counts(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from summed counts, with the empty-mask convention above."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def dice_iou(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Binary Dice (= F1) and IoU of two (H, W) bool masks."""
    preds = torch.from_numpy(np.ascontiguousarray(prediction, dtype=bool)).flatten().long()
    target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=bool)).flatten().long()
    dice = binary_f1_score(preds, target_t, zero_division=1.0, validate_args=False)
    iou = binary_jaccard_index(preds, target_t, zero_division=1.0, validate_args=False)
    return float(dice), float(iou)


def greedy_oracle(masks: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to ``k`` candidate masks whose union has the best IoU with ``target``, chosen
    greedily (each step adds the candidate that raises the union's IoU most; stops when none does).

    This is the "perfect retriever": its Dice bounds what any retriever can get from these candidates.
    """
    if masks.shape[0] == 0 or k <= 0:
        return np.zeros(0, np.int64)
    target = target.astype(bool)
    chosen: list[int] = []
    union = np.zeros_like(target)
    best = 0.0
    flat_masks = masks.reshape(masks.shape[0], -1)
    flat_target = target.reshape(-1)
    for _ in range(min(k, masks.shape[0])):
        merged = flat_masks | union.reshape(1, -1)
        inter = np.count_nonzero(merged & flat_target, axis=1)
        uni = np.count_nonzero(merged | flat_target, axis=1)
        iou = np.where(uni > 0, inter / np.maximum(uni, 1), 1.0)
        iou[chosen] = -1
        pick = int(np.argmax(iou))
        if iou[pick] <= best:
            break
        chosen.append(pick)
        best = float(iou[pick])
        union = union | masks[pick]
    return np.asarray(chosen, np.int64)
