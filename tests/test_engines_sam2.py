"""SAM 2.1 engine: masks equal to Meta's own predictor and automatic mask generator on the same
(tiny random) weights, the official ``.pt`` layout loaded offline, and Hydra left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from conftest import yaml_config
from salip_bench.engines.builder import build_engine

SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def engine():
    return build_engine(yaml_config("model", "sam2_tiny"), "random")


@pytest.fixture(scope="module")
def image(cxr_sample):
    return np.ascontiguousarray(cxr_sample.image[40:440, 60:360])  # not square: 400 x 300


def official_predictor(model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    side = model.image_size  # upstream hard-codes the feature sizes of 1024 px input; sam2_tiny has 256
    predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
    return predictor


def test_importing_and_building_leaves_hydra_uninitialised(engine):
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.parametrize("multimask", [False, True])
def test_box_masks_equal_the_official_predictor(engine, image, multimask):
    boxes = np.array([[10, 20, 150, 300], [100, 50, 290, 390], [0, 0, 299, 399]], np.float32)
    ours = engine.segment_boxes(image, boxes, multimask)
    predictor = official_predictor(engine.model)
    predictor.set_image(image)
    for mask, box in zip(ours, boxes):
        masks, scores, _ = predictor.predict(box=box, multimask_output=multimask)
        np.testing.assert_array_equal(mask, masks[int(np.argmax(scores))] > 0)
    assert ours.shape == (3, *image.shape[:2]) and ours.dtype == bool and ours.any()



def test_disk_feature_cache_serves_a_new_engine_and_misses_for_another_model(tmp_path, image):
    """Features on disk (the run's FeatureCache, keyed by the engine's identity): a new engine of the
    same model encodes nothing and gives the same masks; another seed misses."""
    from salip_bench.storage.feature_cache import FeatureCache

    boxes = np.array([[10, 20, 150, 300], [100, 50, 290, 390]], np.float32)
    tiny = yaml_config("model", "sam2_tiny")
    first = build_engine(tiny, "random", cache=FeatureCache(tmp_path))
    expected = first.segment_boxes(image, boxes, False)
    cache = FeatureCache(tmp_path)
    later = build_engine(tiny, "random", cache=cache)
    np.testing.assert_array_equal(later.segment_boxes(image, boxes, False), expected)
    assert first.counters()["encoder_passes"] == 1 and later.counters()["encoder_passes"] == 0
    assert cache.hits == {"embeddings": 1}
    other = build_engine({**tiny, "random_seed": 1}, "random", cache=FeatureCache(tmp_path))
    other.segment_boxes(image, boxes, False)
    assert other.counters()["encoder_passes"] == 1

def test_everything_equals_the_official_generator_and_the_refiner_reuses_its_embedding(engine, image):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    engine.reset()
    candidates = engine.everything(image, **SETTINGS)
    engine.segment_boxes(image, candidates.boxes[:2], False)
    assert engine.counters()["encoder_passes"] == 1  # the generator's embedding served the boxes
    engine.reset()
    assert engine.counters()["encoder_passes"] == 0
    generator = SAM2AutomaticMaskGenerator(engine.model, output_mode="binary_mask", **SETTINGS)
    generator.predictor = official_predictor(engine.model)
    records = generator.generate(image)
    assert len(candidates) == len(records) > 1
    np.testing.assert_array_equal(candidates.masks, np.stack([r["segmentation"] for r in records]))
    x, y, w, h = np.array([r["bbox"] for r in records], np.float32).T
    np.testing.assert_array_equal(candidates.boxes, np.stack([x, y, x + w, y + h], axis=1))
    np.testing.assert_array_equal(candidates.areas, [r["area"] for r in records])
    np.testing.assert_array_equal(candidates.predicted_iou, np.float32([r["predicted_iou"] for r in records]))
    np.testing.assert_array_equal(candidates.stability_score, np.float32([r["stability_score"] for r in records]))


def test_released_architecture_equals_the_official_builder():
    """Our Hiera-T (from the package yaml, without Hydra's compose) has upstream's exact parameters."""
    from sam2.build_sam import build_sam2

    from salip_bench.engines.sam2_model import build_sam2_model

    ours = build_sam2_model(yaml_config("model", "sam2_hiera_t")).state_dict()
    with initialize_config_module("sam2", version_base="1.2"):
        official = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}
    assert not GlobalHydra.instance().is_initialized()


def test_pretrained_official_pt_in_the_cache_loads_and_matches_the_official_loader(engine, image, tmp_path,
                                                                                   monkeypatch):
    """Tiny random weights written as Meta's ``.pt`` ({"model": state_dict}) into our checkpoint
    cache load with weights=pretrained, and segment exactly as upstream's build_sam2 loading that file."""
    from sam2.build_sam import build_sam2

    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    cfg = yaml_config("model", "sam2_tiny") | {"checkpoint_file": "sam2.1_hiera_tiny_test.pt"}
    source = build_engine(cfg | {"random_seed": 3}, "random")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": source.model.state_dict()}, tmp_path / "checkpoints" / cfg["checkpoint_file"])
    loaded = build_engine(cfg, "pretrained")
    assert loaded.identity["weights"] == "pretrained" and len(loaded.identity["sha256"]) == 64
    overrides = [f"++model.{k}={v}".replace(" ", "") for k, v in cfg["arch_overrides"].items()]
    with initialize_config_module("sam2", version_base="1.2"):
        official = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml",
                              str(tmp_path / "checkpoints" / cfg["checkpoint_file"]),
                              device="cpu", hydra_overrides_extra=overrides)
    predictor = official_predictor(official)
    predictor.set_image(image)
    box = np.array([30, 40, 250, 350], np.float32)
    masks, scores, _ = predictor.predict(box=box, multimask_output=False)
    np.testing.assert_array_equal(loaded.segment_boxes(image, box[None], False)[0], masks[0] > 0)
    assert not np.array_equal(engine.segment_boxes(image, box[None], False),
                              loaded.segment_boxes(image, box[None], False))


def test_not_a_sam2_checkpoint_is_a_clear_error(tmp_path):
    cfg = yaml_config("model", "sam2_tiny") | {"checkpoint": str(tmp_path / "x.pt")}
    torch.save({"state": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="expected a dict with key 'model'"):
        build_engine(cfg, "pretrained")
