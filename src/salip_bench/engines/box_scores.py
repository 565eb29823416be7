"""SAM's own confidence in a box-prompted mask: its predicted IoU and its stability score.

The box engines (SAM v1, SAM 2.1, MedSAM) compute both while they segment: the mask decoder
predicts the IoU next to the masks, and the stability score is upstream's
``calculate_stability_score`` on the mask's logits (the IoU between the mask thresholded at
``threshold + 1`` and at ``threshold - 1``). ``segment_boxes(..., with_scores=True)`` hands them on as
:class:`BoxMasks`; the quality estimators (``salip_bench.qc``) read them, no ground truth involved.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

STABILITY_OFFSET = 1.0  # upstream's default stability_score_offset (logit units)


@dataclass
class BoxMasks:
    """Box-prompted masks with SAM's own scores.

    Args:
        masks: (K, H, W) bool, one per box.
        predicted_iou: (K,) float32, the decoder's IoU prediction for each kept mask.
        stability: (K,) float32 in [0, 1], the stability score of each (0 for an empty mask).
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray


def stability_score(logits: np.ndarray, threshold: float, offset: float = STABILITY_OFFSET) -> float:
    """Upstream's stability score of one (H, W) logit map; 0 where no pixel passes ``threshold - offset``.

    Args:
        logits: (H, W) mask logits at image resolution.
        threshold: the engine's mask threshold (0 for SAM).
        offset: the logit shift on either side.
    """
    value = float(calculate_stability_score(torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None],
                                            threshold, offset)[0])
    return value if np.isfinite(value) else 0.0


class BoxScores:
    """Collects the scores of an engine's ``segment_boxes`` loop, one box at a time.

    Args:
        count: the number of boxes.
    """

    def __init__(self, count: int) -> None:
        self.predicted_iou = np.zeros(count, np.float32)
        self.stability = np.zeros(count, np.float32)

    def add(self, i: int, logits: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Keep box ``i``'s best-scored mask of ``logits`` ((M, H, W), scores (M,)); returns it thresholded.

        Args:
            i: the box's index.
            logits: the predictor's masks with ``return_logits=True``.
            scores: their predicted IoUs.
            threshold: the logit threshold the engine's masks use.
        """
        best = int(np.argmax(scores))
        self.predicted_iou[i] = scores[best]
        self.stability[i] = stability_score(logits[best], threshold)
        return logits[best] > threshold

    def add_probability(self, i: int, probability: np.ndarray, predicted_iou: float) -> None:
        """Box ``i``'s scores from a probability map (MedSAM thresholds sigmoid > 0.5, logit 0).

        Args:
            i: the box's index.
            probability: (H, W) foreground probability.
            predicted_iou: the decoder's IoU prediction of the kept mask.
        """
        self.predicted_iou[i] = predicted_iou
        with np.errstate(divide="ignore"):
            logits = np.log(probability) - np.log1p(-probability)
        self.stability[i] = stability_score(logits, 0.0)

    def result(self, masks: np.ndarray) -> BoxMasks:
        """``masks`` with the collected scores."""
        return BoxMasks(masks, self.predicted_iou, self.stability)
