"""Data passed between the pipeline stages."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidates:
    """Part masks proposed by a generator, one row per mask.

    Args:
        masks: (N, H, W) bool at image resolution.
        boxes: (N, 4) XYXY float pixel coordinates.
        areas: (N,) pixel counts.
        predicted_iou: (N,) SAM's own estimate of each mask's IoU.
        stability_score: (N,) SAM's stability of each mask under threshold shifts.
    """

    masks: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> Candidates:
        """No candidates, for an image of ``height`` × ``width`` (a generator that found nothing)."""
        return cls(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))

    def select(self, index: np.ndarray) -> Candidates:
        """The rows at ``index`` (integer indices or a bool mask over the N rows), in that order."""
        return Candidates(self.masks[index], self.boxes[index], self.areas[index],
                          self.predicted_iou[index], self.stability_score[index])


@dataclass
class Retrieved:
    """Candidates chosen by a retriever: one entry per (class, rank)."""

    candidates: Candidates
    classes: list[str]
    scores: np.ndarray  # (K,) retrieval score (cosine similarity for CLIP retrievers)
    candidate_index: np.ndarray  # (K,) index into the retriever's input candidates
    # Label-free evidence for the quality estimators (salip_bench.qc); None where a retriever has none.
    runner_up: np.ndarray | None = None  # (K,) best score of a candidate its class did not pick (NaN: none left)
    background: np.ndarray | None = None  # (K,) each retrieved candidate's score against the background prototype


@dataclass
class Sample:
    """One 2D evaluation item: RGB uint8 image, binary GT (may be None), and its identity."""

    id: str
    image: np.ndarray | None  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool
    meta: dict = field(default_factory=dict)
    error: str | None = None  # set when loading failed; the sample is recorded as failed


@dataclass
class Prediction:
    """A method's answer for one sample: the mask, boxes worth drawing, and per-sample columns."""

    mask: np.ndarray  # (H, W) bool
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # XYXY, for overlays
    info: dict = field(default_factory=dict)  # extra results.csv columns (JSON-serialisable)
