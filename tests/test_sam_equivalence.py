"""Our generator and refiner give upstream's masks, with one encoder pass per image."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.utils.amg import batched_mask_to_box

from salip_bench.engines.sam_decoder import decode_points_iou_first
from salip_bench.engines.sam_model import build_sam_model
from salip_bench.stages.generators.sam_everything import SamEverythingGenerator
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.types import Candidates, Retrieved

LOW = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _retrieved(boxes: np.ndarray, shape: tuple[int, int]) -> Retrieved:
    n = len(boxes)
    cands = Candidates(np.zeros((n, *shape), bool), boxes.astype(np.float32), np.zeros(n, np.int64),
                       np.zeros(n, np.float32), np.zeros(n, np.float32))
    return Retrieved(cands, ["organ"] * n, np.zeros(n, np.float32), np.arange(n))


def _with_random_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy whose layer norms scale and shift (freshly built ones are the identity, which would hide
    where a scale or shift is applied, and in which dtype)."""
    module = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, (torch.nn.LayerNorm, LayerNorm2d)):
                norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
                norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=generator))
    return module


CROPS = dict(LOW, crop_n_layers=1, crop_n_points_downscale_factor=2)


# Random-weight masks span the whole image, so any NMS below 1 keeps one of them: 1.0 keeps many.
MANY = dict(CROPS, points_per_side=4, pred_iou_thresh=0.02, box_nms_thresh=1.0, crop_nms_thresh=1.0)


@pytest.mark.parametrize("settings", [
    LOW, dict(LOW, pred_iou_thresh=0.1, box_nms_thresh=0.95), CROPS,
    dict(MANY, stability_score_offset=0.01, stability_score_thresh=0.2), dict(MANY, min_mask_region_area=400)],
    ids=["low", "iou+nms", "crops", "crops+stability", "crops+small_regions"])
def test_generator_matches_upstream(tiny_sam, hc18_sample, settings):
    """Same masks, scores and order as upstream, bit for bit; boxes are the masks' tight boxes."""
    tiny_sam.reset()
    ours = SamEverythingGenerator(tiny_sam, **settings)(hc18_sample.image)
    upstream = SamAutomaticMaskGenerator(tiny_sam.sam, **settings).generate(hc18_sample.image)
    assert len(ours) == len(upstream) > 0
    expected = np.stack([r["segmentation"] for r in upstream])
    np.testing.assert_array_equal(ours.masks, expected)
    np.testing.assert_array_equal(ours.predicted_iou, np.float32([r["predicted_iou"] for r in upstream]))
    np.testing.assert_array_equal(ours.stability_score, np.float32([r["stability_score"] for r in upstream]))
    np.testing.assert_array_equal(ours.areas, [r["area"] for r in upstream])
    np.testing.assert_array_equal(ours.boxes, batched_mask_to_box(torch.from_numpy(expected)).numpy())


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
    tiny_sam.reset()  # earlier tests may have encoded these images already
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


@pytest.mark.parametrize("decoder", ["tiny", "released"])
@pytest.mark.parametrize("drop", ["none", "half", "one", "all"])
def test_iou_first_decoder_matches_upstream_decoder(tiny_sam, decoder, drop):
    """Kept prompts get upstream's multimask logits and IoUs bit for bit, with the tiny decoder and
    with the released models' decoder sizes (256 wide, 64x64 embedding; random weights); on CPU the
    released-size transformer takes the 18 prompts as groups of 4, 4, 4 and 6. "one" keeps a single prompt:
    upscaled alone, the transposed tokens of a one-prompt batch take another convolution kernel."""
    if decoder == "tiny":
        model = _with_random_norms(tiny_sam.sam)
    else:
        torch.manual_seed(0)
        model = _with_random_norms(build_sam_model(
            encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=[0],
            image_size=1024, prompt_embed_dim=256, decoder_depth=2, decoder_mlp_dim=2048, decoder_num_heads=8).eval())
    generator = torch.Generator().manual_seed(1)
    side = model.image_encoder.img_size // 16
    features = torch.randn(1, model.prompt_encoder.embed_dim, side, side, generator=generator) * 0.5
    points = torch.rand(18, 1, 2, generator=generator) * model.image_encoder.img_size
    labels = torch.ones(18, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        expected_masks, expected_iou = model.mask_decoder(
            image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True)
        best = expected_iou.max(dim=1).values.sort().values  # a threshold that keeps all, half, one or no prompt:
        pred_iou_thresh = {"none": 0.0, "half": float(best.median()), "one": float(best[-2]),
                           "all": float(best[-1]) + 1}[drop]
        masks, iou, kept = decode_points_iou_first(model, features, points, labels, pred_iou_thresh)
    expected_kept = torch.nonzero((expected_iou > pred_iou_thresh).any(1)).flatten()
    assert torch.equal(kept, expected_kept) and len(kept) == {"none": 18, "half": 9, "one": 1, "all": 0}[drop]
    assert torch.equal(masks, expected_masks[kept]) and torch.equal(iou, expected_iou[kept])


def test_prompt_groups_cover_the_batch_and_are_never_tiny():
    from salip_bench.engines.sam_decoder import _groups

    assert _groups(18, 8) == [slice(0, 8), slice(8, 18)]  # a last group of 2 joins the one before
    assert _groups(64, 8) == [slice(i, i + 8) for i in range(0, 64, 8)]
    assert _groups(3, 8) == [slice(0, 3)] and _groups(12, 12) == [slice(0, 12)]


@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_in_place_upscaling_matches_upstream(tiny_sam, precision):
    """The upscaling with its layer norm and GELUs in place gives upstream's tensor bit for bit, also
    under bf16 autocast, where upstream's float32 scale and shift promote the bf16 convolution output."""
    from salip_bench.engines.sam_decoder import _upscale

    upscaling = _with_random_norms(tiny_sam.sam.mask_decoder.output_upscaling)
    channels = upscaling[0].in_channels
    tokens = torch.randn(3, 16 * 16, channels, generator=torch.Generator().manual_seed(0))
    x = tokens.transpose(1, 2).view(3, channels, 16, 16)  # the decoder's layout: channels-last
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        expected, ours = upscaling(x), _upscale(upscaling, x)
    assert ours.dtype == expected.dtype and torch.equal(ours, expected)


def test_everything_settings_defaults_are_upstreams():
    """The engine's knobs default to upstream's generator's, as does the stage plugin's signature."""
    import inspect
    from dataclasses import fields

    from salip_bench.engines.sam_grid import EverythingSettings

    upstream = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    plugin = inspect.signature(SamEverythingGenerator.__init__).parameters
    for field in fields(EverythingSettings):
        assert field.default == upstream[field.name].default == plugin[field.name].default, field.name
