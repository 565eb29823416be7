"""Dice and IoU from confusion counts (counted by torchmetrics), boundary metrics (NSD, HD95) with MONAI, under one
convention per metric for empty masks.

Conventions (also in summary.json, following Metrics Reloaded, Maier-Hein et al. 2024):
- Dice / IoU: ground truth and prediction both empty → 1 (nothing to find, nothing found);
  exactly one empty → 0.
- NSD: both empty → 1; exactly one empty → 0 (no boundary lies within tolerance of the other).
- HD95: both empty → 0; exactly one empty → undefined (None): there is no distance to a boundary
  that does not exist. Such samples are counted (``hd95_n_undefined``) and listed, never dropped.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

EMPTY_MASK_CONVENTION = "both GT and prediction empty: dice = iou = 1; exactly one empty: dice = iou = 0"
BOUNDARY_CONVENTIONS = {
    "nsd": "both GT and prediction empty: nsd = 1; exactly one empty: nsd = 0",
    "hd95": "both GT and prediction empty: hd95 = 0; exactly one empty: hd95 undefined (empty cell), "
            "counted as hd95_n_undefined",
}
NSD_TOLERANCE_MM = 2.0


def mask_tensor(mask: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """A mask as the 0/1 ``uint8`` tensor torchmetrics' stat scores count (non-zero = foreground).

    Args:
        mask: a mask of any shape and dtype.
        device: where the tensor goes (None: CPU).
    """
    return torch.from_numpy(np.ascontiguousarray(np.asarray(mask) != 0).view(np.uint8)).to(device)


def counts_dict(stat_scores: torch.Tensor) -> dict[str, int]:
    """``{"tp", "fp", "fn"}`` as Python ints from torchmetrics' ``[tp, fp, tn, fn, support]``."""
    tp, fp, _, fn, _ = (int(v) for v in stat_scores.tolist())
    return {"tp": tp, "fp": fp, "fn": fn}


def confusion_counts(prediction: np.ndarray, target: np.ndarray) -> dict[str, int]:
    """True/false positives and false negatives of two masks, by torchmetrics' integer stat scores
    (exact int64 counts); summed over slices they give a volume's 3D Dice.

    Args:
        prediction: a mask of any shape (non-zero = foreground).
        target: the ground truth, same shape.

    Returns:
        ``{"tp": ..., "fp": ..., "fn": ...}`` as Python ints.
    """
    from torchmetrics.functional.classification import binary_stat_scores

    return counts_dict(binary_stat_scores(mask_tensor(prediction), mask_tensor(target), validate_args=False))


def dice_iou_from_counts(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from counts: the one place that computes them and applies :data:`EMPTY_MASK_CONVENTION`.

    Per image, per volume (counts summed over its slices), per run and in the U-Net's validation alike.
    The counts come from torchmetrics' integer stat scores (:func:`confusion_counts`, the predict
    module's ``BinaryStatScores``); the division is here, in float64 on Python ints, rather than
    torchmetrics' ``binary_f1_score`` / ``binary_jaccard_index``: those divide in float32 and apply
    their own zero-division value, not :data:`EMPTY_MASK_CONVENTION`.

    Args:
        tp: true-positive pixels.
        fp: false-positive pixels.
        fn: false-negative pixels.

    Returns:
        ``(dice, iou)``; both 1.0 when all counts are 0 (both masks empty).
    """
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def dice_iou(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Binary Dice (= F1) and IoU of two masks, through :func:`dice_iou_from_counts`.

    Args:
        prediction: a mask of any shape (non-zero = foreground).
        target: the ground truth, same shape.

    Returns:
        ``(dice, iou)`` under :data:`EMPTY_MASK_CONVENTION`.
    """
    return dice_iou_from_counts(**confusion_counts(np.asarray(prediction), np.asarray(target)))


def boundary_metrics(prediction: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                     tolerance: float = NSD_TOLERANCE_MM) -> dict[str, float | None]:
    """Normalised surface Dice and the 95th-percentile Hausdorff distance of two masks, through MONAI.

    Empty masks follow :data:`BOUNDARY_CONVENTIONS`; MONAI is asked only when both masks are non-empty.

    Args:
        prediction: a bool mask, 2D or 3D.
        target: the ground truth, same shape.
        spacing: the size of a pixel/voxel along each axis (mm); None: 1 per axis.
        tolerance: the NSD tolerance, in the units of ``spacing``.

    Returns:
        ``{"nsd": float, "hd95": float or None}``, HD95 in the units of ``spacing``.
    """
    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    pred_empty, target_empty = not prediction.any(), not target.any()
    if pred_empty and target_empty:
        return {"nsd": 1.0, "hd95": 0.0}
    if pred_empty or target_empty:
        return {"nsd": 0.0, "hd95": None}
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    spacing = [float(s) for s in spacing] if spacing is not None else [1.0] * prediction.ndim
    pred_t = torch.from_numpy(np.ascontiguousarray(prediction))[None, None].float()
    target_t = torch.from_numpy(np.ascontiguousarray(target))[None, None].float()
    with warnings.catch_warnings():  # MONAI's deprecation notice of an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        nsd = compute_surface_dice(pred_t, target_t, [float(tolerance)], include_background=True, spacing=spacing)
        hd95 = compute_hausdorff_distance(pred_t, target_t, include_background=True, percentile=95, spacing=spacing)
    return {"nsd": float(nsd.item()), "hd95": float(hd95.item())}


def greedy_oracle(masks: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to ``k`` candidate masks whose union has the best IoU with ``target``, chosen
    greedily (each step adds the candidate that raises the union's IoU most; stops when none does).

    This is the "perfect retriever": its Dice bounds what any retriever can get from these candidates.

    Args:
        masks: (N, H, W) bool candidate masks.
        target: (H, W) ground truth.
        k: the most candidates to choose.

    Returns:
        (M,) int64 indices into ``masks``, M ≤ k, in the order they were chosen.
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
