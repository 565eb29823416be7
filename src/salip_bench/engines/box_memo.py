"""A memo of box-prompted masks, composed around any engine with the box role.

Tuning's trials on one image often retrieve the very same boxes (a trial that changes a threshold
the winning candidates pass anyway), and each would prompt the refiner's SAM again: a prompt-encoder
and mask-decoder pass and a full-resolution upscale per box. :class:`BoxMemo` keeps the masks of
one call, keyed by the engine's identity, the image's content key, the boxes' bytes and
``multimask_output``, so a repeated call returns the stored masks. It keys the whole call rather
than each box: an engine may decode the boxes of one call as a batch, and a batch's numerics are
only guaranteed for that same batch, so a hit is bit-identical to the call it replaces.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from salip_bench.engines.box_scores import BoxMasks
from salip_bench.engines.memo import FeatureMemo
from salip_bench.engines.roles import BoxPromptSegmenter
from salip_bench.storage.content_keys import array_key, hashed_once, image_key


class BoxMemoStore:
    """The stored calls of every engine a tuning shares, least recently used first out.

    Args:
        max_calls: calls kept (each holds K full-size boolean masks).
    """

    def __init__(self, max_calls: int = 64) -> None:
        self.calls: FeatureMemo[np.ndarray] = FeatureMemo(max_calls)
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.calls.clear()

    def around(self, engine: Any) -> Any:
        """``engine`` with its box role memoised in this store (an engine without the role: itself).

        Args:
            engine: any engine; one already wrapped is returned as it is.
        """
        if isinstance(engine, BoxMemo) or not isinstance(engine, BoxPromptSegmenter):
            return engine
        return BoxMemo(engine, self)


class BoxMemo:
    """``engine`` whose :meth:`segment_boxes` answers a repeated call from ``store``; every other
    attribute (identity, counters, the other roles) is the engine's own.

    Args:
        engine: an engine with the box role (``engines/roles.py``).
        store: where the calls are kept (shared by the wrappers of one tuning).
    """

    def __init__(self, engine: BoxPromptSegmenter, store: BoxMemoStore) -> None:
        self.engine, self.store = engine, store
        self._engine_key = json.dumps(getattr(engine, "identity", {}), sort_keys=True, default=str)

    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool,
                      with_scores: bool = False) -> np.ndarray | BoxMasks:
        """The engine's masks for ``boxes`` on ``image`` ((K, H, W) bool; ``with_scores``: its
        :class:`~salip_bench.engines.box_scores.BoxMasks`), computed once per distinct call. The result
        is shared with later hits: callers must not write into it."""
        boxes = np.ascontiguousarray(boxes, np.float32)
        with hashed_once():
            key = (self._engine_key, image_key(image), array_key(boxes), bool(multimask_output), with_scores)
            masks = self.store.calls.get(key)
            if masks is None:
                self.store.misses += 1
                # the scores are asked for only when wanted, so an engine without them still serves
                masks = (self.engine.segment_boxes(image, boxes, multimask_output, True) if with_scores
                         else self.engine.segment_boxes(image, boxes, multimask_output))
                (masks.masks if with_scores else masks).setflags(write=False)
                self.store.calls.put(key, masks)
            else:
                self.store.hits += 1
        return masks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def unwrapped(engine: Any) -> Any:
    """The engine inside a :class:`BoxMemo` (any other engine: itself).

    Args:
        engine: an engine, memoised or not.
    """
    return engine.engine if isinstance(engine, BoxMemo) else engine
