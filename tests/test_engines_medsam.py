"""MedSAM engine: MedSAM's published inference recipe (bowang-lab/MedSAM ``MedSAM_Inference.py``)
reproduced on the same tiny random weights, its ``.pth`` loaded offline, and it refuses to generate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import transform

from conftest import yaml_config
from salip_bench.engines.builder import build_engine
from salip_bench.engines.roles import MissingRoleError
from salip_bench.stages.generators.sam_everything import SamEverythingGenerator


@pytest.fixture(scope="module")
def engine():
    return build_engine(yaml_config("model", "medsam_tiny"), "random")


def recipe_mask(sam, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The steps of MedSAM's inference script, written out for one box: square bicubic resize with
    anti-aliasing to uint8, min-max to [0, 1], box into the square frame, one mask, sigmoid,
    bilinear upsampling to the image, > 0.5."""
    height, width = image.shape[:2]
    side = sam.image_encoder.img_size
    square = transform.resize(image, (side, side), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    square = (square - square.min()) / np.clip(square.max() - square.min(), a_min=1e-8, a_max=None)
    with torch.no_grad():
        embedding = sam.image_encoder(torch.tensor(square).float().permute(2, 0, 1).unsqueeze(0))
        box_square = torch.as_tensor(box[None] / np.array([width, height, width, height]) * side, dtype=torch.float)
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_square[:, None, :], masks=None)
        logits, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        probability = F.interpolate(torch.sigmoid(logits), size=(height, width), mode="bilinear", align_corners=False)
    return probability.squeeze().numpy() > 0.5


BOXES = np.array([[120, 80, 600, 460], [300.5, 200.25, 700, 520], [0, 0, 799, 539]], np.float32)


def test_masks_equal_medsams_published_recipe(engine, hc18_sample):
    image = hc18_sample.image  # 540 x 800: not square, so the aspect-ratio handling matters
    engine.reset()
    ours = engine.segment_boxes(image, BOXES, False)
    assert ours.shape == (3, *image.shape[:2]) and ours.dtype == bool
    for mask, box in zip(ours, BOXES):
        np.testing.assert_array_equal(mask, recipe_mask(engine.sam, image, box))
    assert engine.counters() == {"encoder_passes": 1}  # one embedding for all boxes of an image
    engine.segment_boxes(image, BOXES[:1], True)
    assert engine.counters() == {"encoder_passes": 1}


def test_preprocessing_is_not_sam_predictors(engine, hc18_sample):
    """The square, aspect-distorting resize: the network input is the whole image squeezed to side²."""
    from salip_bench.engines.medsam_engine import medsam_input

    pixels = medsam_input(hc18_sample.image, 256)
    assert pixels.shape == (256, 256, 3) and pixels.min() == 0.0 and pixels.max() == 1.0


def test_pretrained_pth_in_the_cache_loads(engine, hc18_sample, tmp_path, monkeypatch):
    """Tiny random weights saved as MedSAM's ``.pth`` (a SAM state dict) into our checkpoint cache
    load with weights=pretrained and give the recipe's masks for those weights."""
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    cfg = yaml_config("model", "medsam_tiny") | {"checkpoint_file": "medsam_vit_b_test.pth"}
    source = build_engine(cfg | {"random_seed": 5}, "random")
    (tmp_path / "checkpoints").mkdir()
    torch.save(source.sam.state_dict(), tmp_path / "checkpoints" / cfg["checkpoint_file"])
    loaded = build_engine(cfg, "pretrained")
    assert loaded.identity["file"].endswith(cfg["checkpoint_file"]) and len(loaded.identity["sha256"]) == 64
    mask = loaded.segment_boxes(hc18_sample.image, BOXES[:1], False)[0]
    np.testing.assert_array_equal(mask, recipe_mask(source.sam, hc18_sample.image, BOXES[0]))


def test_missing_checkpoint_names_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    from salip_bench.engines.weights import WeightsNotFoundError

    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"medsam_vit_b\.pth.*bowang-lab/MedSAM"):
        build_engine(yaml_config("model", "medsam_vit_b"), "pretrained")


def test_as_generator_it_is_a_one_line_error_naming_the_key(engine):
    with pytest.raises(MissingRoleError, match=r"generator sam_everything needs point-grid everything generation.*"
                                               r"'medsam_tiny' \(chosen by model=\)") as err:
        SamEverythingGenerator(engine)
    assert "\n" not in str(err.value)
