"""CLIP's visual-prompt embedding cache: hits give what fresh encodings give and cost no CLIP pass;
another CLIP, prompt kind, prompt parameter or mask misses; later jobs encode nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import HC18, SMOKE, compose_config, yaml_config
from salip_bench.engines.builder import build_engine
from salip_bench.evaluation.harness import run
from salip_bench.registry import RETRIEVERS
from salip_bench.stages.generators.sam_everything import SamEverythingGenerator
from salip_bench.storage import content_keys
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.types import Candidates

PROMPTS = {"organ": ["a photo of an organ", "an organ"]}


@pytest.fixture(scope="module")
def image(hc18_sample):
    return np.ascontiguousarray(hc18_sample.image[100:300, 200:440])


@pytest.fixture(scope="module")
def candidates(tiny_sam, image):
    found = SamEverythingGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                   box_nms_thresh=1.0)(image)
    assert len(found) >= 6
    return found


def clip_with(cache: FeatureCache | None = None, **changes):
    return build_engine({**yaml_config("clip", "tiny"), **changes}, "random", "clip", cache=cache)


def retriever(clip, name: str = "crop", **params):
    return RETRIEVERS.build({"name": name, **params}, clip=clip, class_prompts=PROMPTS, top_k={"organ": 2})


def fresh_scores(name: str, image: np.ndarray, candidates: Candidates, **params) -> np.ndarray:
    """Scores from an engine without any cache: every visual prompt encoded, in one batch."""
    clip = clip_with()
    clip.embedding_cache = None
    return retriever(clip, name, **params).scores(image, candidates)


def encoded(clip, fn) -> int:
    before = clip.images_encoded
    fn()
    return clip.images_encoded - before


@pytest.mark.parametrize("name", ["crop", "crop_expand", "box", "reverse_blur", "contour"])
def test_hits_are_fresh_encodings_and_encode_nothing(image, candidates, name):
    clip = clip_with()
    first = retriever(clip, name)
    part = candidates.select(np.arange(3))  # a later trial keeps fewer candidates, then more
    assert encoded(clip, lambda: first.scores(image, part)) == 3
    later = retriever(clip, name)  # another trial's retriever on the same engine
    scores = {}
    assert encoded(clip, lambda: scores.setdefault("all", later.scores(image, candidates))) == len(candidates) - 3
    assert encoded(clip, lambda: scores.setdefault("again", later.scores(image, candidates))) == 0
    expected = fresh_scores(name, image, candidates)
    np.testing.assert_array_equal(scores["all"], expected)
    np.testing.assert_array_equal(scores["again"], expected)
    np.testing.assert_array_equal(first.scores(image, part), fresh_scores(name, image, part))


def test_clip_prompt_kind_parameters_and_mask_invalidate(tmp_path, image, candidates):
    cache = FeatureCache(tmp_path)
    clip = clip_with(cache)
    retriever(clip, "crop_expand").scores(image, candidates)
    n = len(candidates)
    assert encoded(clip, lambda: retriever(clip, "crop_expand").scores(image, candidates)) == 0
    assert encoded(clip, lambda: retriever(clip, "crop").scores(image, candidates)) == n  # another kind
    assert encoded(clip, lambda: retriever(clip, "crop_expand", margin=0.2).scores(image, candidates)) == n  # parameter
    other_clip = clip_with(cache, random_seed=1)
    assert encoded(other_clip, lambda: retriever(other_clip, "crop_expand").scores(image, candidates)) == n
    # same identity, other arch
    wider = clip_with(cache, tiny={**yaml_config("clip", "tiny")["tiny"], "vision_layers": 1})
    assert encoded(wider, lambda: retriever(wider, "crop_expand").scores(image, candidates)) == n
    changed = candidates.select(np.arange(n))
    changed.masks[0, 0, 0] = ~changed.masks[0, 0, 0]  # one pixel of one mask
    assert encoded(clip, lambda: retriever(clip, "crop_expand").scores(image, changed)) == 1
    np.testing.assert_array_equal(retriever(clip, "crop_expand").scores(image, changed),
                                  fresh_scores("crop_expand", image, changed))
    other_image = image.copy()
    other_image[0, 0] += 1
    assert encoded(clip, lambda: retriever(clip, "crop_expand").scores(other_image, candidates)) == n


def test_disk_layer_serves_a_new_engine_unless_switched_off(tmp_path, image, candidates):
    retriever(clip_with(FeatureCache(tmp_path)), "box").scores(image, candidates)
    clip = clip_with(FeatureCache(tmp_path))  # a new engine: only the disk remembers
    scores = []
    assert encoded(clip, lambda: scores.append(retriever(clip, "box").scores(image, candidates))) == 0
    np.testing.assert_array_equal(scores[0], fresh_scores("box", image, candidates))
    off = clip_with(FeatureCache(tmp_path, clip=False))
    assert encoded(off, lambda: retriever(off, "box").scores(image, candidates)) == len(candidates)
    clip.reset()  # the next job of a multirun: memory forgotten, the disk still serves
    assert encoded(clip, lambda: retriever(clip, "box").scores(image, candidates)) == 0


def test_filter_sweep_later_jobs_encode_nothing(tmp_path):
    base = SMOKE + ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head", "limit=2",
                    "cache.enabled=true", f"cache.dir={tmp_path / 'cache'}"]
    summaries = []
    for name, job in (("none", ["filter=none", "~filter.max_area"]), ("area", ["filter=area", "filter.max_area=0.6"])):
        out = tmp_path / name
        summaries.append(run(compose_config(base + job + [f"output_dir={out}"]), out))
    assert summaries[0]["work"]["clip_images_encoded"] > 0 and summaries[0]["work"]["sam_encoder_passes"] == 2
    assert summaries[1]["work"]["clip_images_encoded"] == 0 and summaries[1]["work"]["sam_encoder_passes"] == 0
    out = tmp_path / "plain"
    plain = run(compose_config(base + ["filter=area", "filter.max_area=0.6", "cache.enabled=false",
                                       f"output_dir={out}"]), out)
    assert plain["work"]["clip_images_encoded"] > 0 and plain["dice_mean"] == summaries[1]["dice_mean"]


def test_each_image_is_hashed_once_per_sample(tmp_path, monkeypatch):
    hashed = []
    array_key = content_keys.array_key
    monkeypatch.setattr(content_keys, "array_key", lambda a, *r: hashed.append(a.shape) or array_key(a, *r))
    out = tmp_path / "run"
    cfg = compose_config(SMOKE + ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head", "limit=2",
                                  "cache.enabled=true", f"cache.dir={tmp_path / 'cache'}", f"output_dir={out}"])
    assert run(cfg, out)["n_ok"] == 2
    assert len(hashed) == 2 and all(len(shape) == 3 for shape in hashed)  # proposals, SAM, refiner and CLIP keys


def test_autocast_dtype_is_part_of_the_key(image):
    clip = clip_with()
    plain = clip.embedding_cache.group_key(clip, {"kind": "x"}, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert clip.embedding_cache.group_key(clip, {"kind": "x"}, image) != plain


def test_a_candidate_listed_twice_is_encoded_once(image, candidates):
    clip = clip_with()
    twice = candidates.select(np.array([1, 0, 1, 2]))
    scores = []
    assert encoded(clip, lambda: scores.append(retriever(clip).scores(image, twice))) == 3
    np.testing.assert_array_equal(scores[0], fresh_scores("crop", image, twice))
