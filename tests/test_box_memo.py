"""What tuning's trials reuse inside one image: box-prompted masks (``engines/box_memo.py``), the
upscaled masks of one decoding (``engines/sam_grid.py``) and the scores of one predicted mask
(``evaluation/lightning_module.ScoreMemo``). Each must give exactly what computing afresh gives."""
from __future__ import annotations

import numpy as np
import pytest

from salip_bench.engines.box_memo import BoxMemo, BoxMemoStore
from salip_bench.engines.sam_grid import EverythingSettings, apply_grid
from salip_bench.evaluation.lightning_module import PredictModule, ScoreMemo

BOXES = np.array([[10, 20, 120, 140], [40, 40, 200, 180]], np.float32)


class CountingBoxes:
    """An engine with the box role that counts its calls (and a second role, passed through)."""

    def __init__(self, engine, identity=None):
        self.engine, self.calls = engine, 0
        self.identity = identity or engine.identity

    def segment_boxes(self, image, boxes, multimask_output):
        self.calls += 1
        return self.engine.segment_boxes(image, boxes, multimask_output)

    def counters(self) -> dict:
        return {"calls": self.calls}


def test_a_repeated_call_is_answered_from_the_memo(tiny_sam, hc18_sample):
    engine, store = CountingBoxes(tiny_sam), BoxMemoStore()
    memo = store.around(engine)
    assert isinstance(memo, BoxMemo) and store.around(memo) is memo
    first = memo.segment_boxes(hc18_sample.image, BOXES, False)
    again = memo.segment_boxes(hc18_sample.image, BOXES.copy(), False)
    assert engine.calls == 1 and again is first and (store.hits, store.misses) == (1, 1)
    assert np.array_equal(first, tiny_sam.segment_boxes(hc18_sample.image, BOXES, False))
    assert not first.flags.writeable  # shared by later hits
    assert memo.counters() == {"calls": 1} and memo.identity == tiny_sam.identity  # the engine's own


@pytest.mark.parametrize("change", ["box", "multimask", "image", "engine"])
def test_any_change_of_what_the_masks_depend_on_misses(tiny_sam, hc18_sample, cxr_sample, change):
    engine, store = CountingBoxes(tiny_sam), BoxMemoStore()
    store.around(engine).segment_boxes(hc18_sample.image, BOXES, False)
    image, boxes, multimask, caller = hc18_sample.image, BOXES, False, engine
    if change == "box":
        boxes = BOXES + np.float32(1)
    elif change == "multimask":
        multimask = True
    elif change == "image":
        image = cxr_sample.image
    else:  # another model (another identity) on the same image and boxes
        caller = CountingBoxes(tiny_sam, identity={**tiny_sam.identity, "model": "another"})
    before = caller.calls
    masks = store.around(caller).segment_boxes(image, boxes, multimask)
    assert caller.calls == before + 1 and store.misses == 2 and store.hits == 0
    assert np.array_equal(masks, tiny_sam.segment_boxes(image, boxes, multimask))


def test_the_store_is_bounded_and_an_engine_without_the_box_role_is_left_alone(tiny_sam, hc18_sample):
    store = BoxMemoStore(max_calls=2)
    memo = store.around(tiny_sam)
    for shift in range(3):
        memo.segment_boxes(hc18_sample.image, BOXES + np.float32(shift), False)
    memo.segment_boxes(hc18_sample.image, BOXES, False)  # the oldest call was dropped
    assert (store.hits, store.misses) == (0, 4)
    no_role = object()
    assert store.around(no_role) is no_role


def _candidates_equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("masks", "boxes", "areas", "predicted_iou", "stability_score"))


def test_one_decoding_upscales_once_for_every_setting_applied_to_it(tiny_sam, hc18_sample, monkeypatch):
    # The tiny random SAM's masks all span the image (NMS would keep one) and have stability 0.
    loose = EverythingSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                               box_nms_thresh=1.0)
    strict = EverythingSettings(points_per_side=4, pred_iou_thresh=0.19, stability_score_thresh=0.0,
                                box_nms_thresh=0.9)
    offset = EverythingSettings(**{**loose.as_dict(), "stability_score_offset": 2.0})
    decoded = tiny_sam.initialize_everything(hc18_sample.image, loose.as_dict(), 0.0)
    upscales = []
    postprocess = tiny_sam.sam.postprocess_masks
    monkeypatch.setattr(tiny_sam.sam, "postprocess_masks", lambda *a: upscales.append(1) or postprocess(*a))
    first = apply_grid(tiny_sam.sam, decoded, loose)
    batches = len(decoded.crops[0].batches)
    second = apply_grid(tiny_sam.sam, decoded, strict)
    assert len(upscales) == batches  # the second settings upscaled nothing
    shifted = apply_grid(tiny_sam.sam, decoded, offset)
    assert len(upscales) == 2 * batches  # another stability offset is other scores: upscaled again
    monkeypatch.undo()
    fresh = [apply_grid(tiny_sam.sam, tiny_sam.initialize_everything(hc18_sample.image, s.as_dict(), 0.0), s)
             for s in (loose, strict, offset)]
    assert all(_candidates_equal(a, b) for a, b in zip((first, second, shifted), fresh))
    assert 0 < len(second.masks) < len(first.masks)  # the strict settings did drop some masks


def test_a_mask_is_scored_once_per_sample_and_tolerance(hc18_sample, monkeypatch):
    module = PredictModule(lambda s: None, {}, True, "f")
    memo, computed = ScoreMemo(), []

    def score(mask):
        return lambda: computed.append(1) or module.score(mask, hc18_sample)
    mask = hc18_sample.mask.astype(bool)
    shifted = np.roll(mask, 5, axis=1)
    first = memo.get(hc18_sample, mask, 2.0, score(mask))
    assert memo.get(hc18_sample, mask.copy(), 2.0, score(mask)) == first and len(computed) == 1
    assert memo.get(hc18_sample, shifted, 2.0, score(shifted)) == module.score(shifted, hc18_sample)
    memo.get(hc18_sample, mask, 1.0, score(mask))
    assert len(computed) == 3
    first[0]["dice"] = -1.0  # callers get copies
    assert memo.get(hc18_sample, mask, 2.0, score(mask))[0]["dice"] == 1.0
    memo.clear()
    memo.get(hc18_sample, mask, 2.0, score(mask))
    assert len(computed) == 4
