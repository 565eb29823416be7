"""Our generator and refiner give upstream's masks, with one encoder pass per image."""
from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from salip_bench.generators.sam_everything import SamEverythingGenerator
from salip_bench.refiners.sam_box import SamBoxRefiner
from salip_bench.types import Candidates, Retrieved

LOW = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _retrieved(boxes: np.ndarray, shape: tuple[int, int]) -> Retrieved:
    n = len(boxes)
    cands = Candidates(np.zeros((n, *shape), bool), boxes.astype(np.float32), np.zeros(n, np.int64),
                       np.zeros(n, np.float32), np.zeros(n, np.float32))
    return Retrieved(cands, ["organ"] * n, np.zeros(n, np.float32), np.arange(n))


@pytest.mark.parametrize("settings", [LOW, dict(LOW, pred_iou_thresh=0.1, box_nms_thresh=0.95),
                                      dict(LOW, crop_n_layers=1, crop_n_points_downscale_factor=2)])
def test_generator_matches_upstream(tiny_sam, hc18_sample, settings):
    ours = SamEverythingGenerator(tiny_sam, **settings)(hc18_sample.image)
    upstream = SamAutomaticMaskGenerator(tiny_sam.sam, **settings).generate(hc18_sample.image)
    assert len(ours) == len(upstream) > 0
    order = np.argsort([-r["area"] for r in upstream], kind="stable")
    ours_order = np.argsort(-ours.areas, kind="stable")
    for i, j in zip(ours_order, order):
        np.testing.assert_array_equal(ours.masks[i], upstream[j]["segmentation"])
        assert ours.predicted_iou[i] == pytest.approx(upstream[j]["predicted_iou"], abs=1e-6)
        assert ours.stability_score[i] == pytest.approx(upstream[j]["stability_score"], abs=1e-6)
        assert ours.areas[i] == upstream[j]["area"]


def test_no_surviving_mask_is_not_a_crash(tiny_sam, cxr_sample):
    settings = dict(points_per_side=4, pred_iou_thresh=0.999, crop_n_layers=1)
    with pytest.raises(IndexError):  # the upstream bug this generator guards against
        SamAutomaticMaskGenerator(tiny_sam.sam, **settings).generate(cxr_sample.image)
    empty = SamEverythingGenerator(tiny_sam, **settings)(cxr_sample.image)
    assert len(empty) == 0 and empty.masks.shape == (0, *cxr_sample.image.shape[:2])


def test_refiner_matches_upstream_box_prompt(tiny_sam, cxr_sample):
    image = cxr_sample.image
    boxes = np.array([[40, 60, 300, 420], [320, 50, 600, 500]], np.float32)
    union = SamBoxRefiner(tiny_sam)(image, _retrieved(boxes, image.shape[:2]))
    predictor = SamPredictor(tiny_sam.sam)
    predictor.set_image(image)
    expected = np.zeros(image.shape[:2], bool)
    for box in boxes:
        masks, _, _ = predictor.predict(box=box, multimask_output=False)
        expected |= masks[0]
    np.testing.assert_array_equal(union, expected)


def test_one_encoder_pass_per_image_for_generator_and_refiner(tiny_sam, hc18_sample, cxr_sample):
    tiny_sam.predictor.forget()  # earlier tests may have encoded these images already
    passes = []
    handle = tiny_sam.sam.image_encoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        generator, refiner = SamEverythingGenerator(tiny_sam, **LOW), SamBoxRefiner(tiny_sam)
        for sample in (hc18_sample, cxr_sample):
            before = len(passes)
            candidates = generator(sample.image)
            retrieved = Retrieved(candidates.select(np.arange(min(2, len(candidates)))), ["x"] * 2,
                                  np.zeros(2, np.float32), np.arange(2))
            refiner(sample.image, retrieved)
            assert len(passes) - before == 1
    finally:
        handle.remove()
