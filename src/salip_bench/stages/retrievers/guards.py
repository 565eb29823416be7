"""Top-k selection of the CLIP retrievers, with the guards against SaLIP's known retrieval failures.

The paper's Fig. 5: CLIP retrieves two masks of the same lung instead of both lungs (its top-2 are
near-duplicates). Two optional guards (both off by default, the paper's behaviour):

- ``dedup_iou``: within one class's top-k, a candidate whose IoU with one already picked for that
  class exceeds it is skipped (the next-best candidate takes its place);
- ``exclusive``: a candidate may be retrieved only by the class (or the background) whose prototype
  it matches best, as CLIP's zero-shot classification assigns an image to one label, instead of
  every class ranking all candidates. A candidate closest to the background prototype goes to none.

Alongside the picks the selection records, for the quality estimators, each pick's runner-up (the
best score of a candidate its class did not pick) and its score against the background prototype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from salip_bench.types import Candidates, Retrieved

# What "not the organ" looks like to CLIP: the background prototype's sentences (mean embedding).
BACKGROUND_SENTENCES = ("a medical image of background tissue.", "an empty region of a medical image.",
                        "a blurry patch of noise.", "the dark background outside the body.")


@dataclass(frozen=True)
class RetrievalGuards:
    """The retriever's guards (their accepted values: ``CLIP_ACCEPTS`` in ``clip_base.py``).

    Args:
        dedup_iou: skip a candidate overlapping one already picked for its class beyond this IoU
            (None: no check).
        exclusive: each candidate competes only for the class (or background) it matches best.
    """

    dedup_iou: float | None = None
    exclusive: bool = False


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks (two empty masks: 0, they cannot duplicate anything)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def pick(order: np.ndarray, masks: np.ndarray, k: int, dedup_iou: float | None) -> list[int]:
    """The first ``k`` of ``order`` (candidate indices, best first), skipping near-duplicates.

    Args:
        order: candidate indices in decreasing score.
        masks: (N, H, W) bool candidate masks.
        k: how many to pick.
        dedup_iou: the IoU above which a candidate duplicates an earlier pick (None: never).
    """
    chosen: list[int] = []
    for i in order.tolist():
        if len(chosen) == k:
            break
        if dedup_iou is not None and any(mask_iou(masks[i], masks[j]) > dedup_iou for j in chosen):
            continue
        chosen.append(i)
    return chosen


def retrieve_top_k(candidates: Candidates, similarity: np.ndarray, background: np.ndarray, classes: list[str],
                   top_k: dict[str, int], guards: RetrievalGuards = RetrievalGuards()) -> Retrieved:
    """Each class's ``top_k`` candidates by similarity, under ``guards``; with the runner-up and
    background scores of every pick.

    Args:
        candidates: the N scored candidates.
        similarity: (N, C) score of each candidate for each class (columns in ``classes`` order).
        background: (N,) score of each candidate against the background prototype.
        classes: the C class names.
        top_k: picks per class.
        guards: the optional guards (default: none, the paper's top-k).
    """
    eligible = np.ones(similarity.shape, bool)
    if guards.exclusive:  # the best of C classes + background, ties to the earlier class
        winner = np.argmax(np.concatenate([similarity, background[:, None]], axis=1), axis=1)
        eligible = winner[:, None] == np.arange(similarity.shape[1])[None]
    picked, names, scores, runner_up = [], [], [], []
    for column, name in enumerate(classes):
        order = np.argsort(-similarity[:, column], kind="stable")
        chosen = pick(order[eligible[order, column]], candidates.masks, top_k[name], guards.dedup_iou)
        left = np.setdiff1d(np.arange(len(candidates)), chosen)
        best_left = float(similarity[left, column].max()) if len(left) else float("nan")
        picked += chosen
        names += [name] * len(chosen)
        scores += similarity[chosen, column].tolist()
        runner_up += [best_left] * len(chosen)
    index = np.asarray(picked, np.int64)
    return Retrieved(candidates.select(index), names, np.asarray(scores, np.float32), index,
                     runner_up=np.asarray(runner_up, np.float32), background=background[index].astype(np.float32))


def select_classes(retrieved: Retrieved, classes: list[str]) -> Retrieved:
    """The entries of ``retrieved`` whose class is one of ``classes`` (one organ of a multi-organ run)."""
    keep = np.asarray([i for i, name in enumerate(retrieved.classes) if name in classes], np.int64)

    def rows(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[keep]
    return Retrieved(retrieved.candidates.select(keep), [retrieved.classes[i] for i in keep], retrieved.scores[keep],
                     retrieved.candidate_index[keep], runner_up=rows(retrieved.runner_up),
                     background=rows(retrieved.background))
