"""The feature cache: hits cost no SAM pass and change nothing, keys invalidate, size is bounded;
and the jobs of one process share their engines."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import CXR, SMOKE, compose_config, yaml_config
from salip_bench.engines import builder
from salip_bench.engines.builder import build_engine as build_sam
from salip_bench.evaluation.harness import config_fingerprint, run
from salip_bench.stages.generators.sam_everything import SamEverythingGenerator
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.types import Candidates, Retrieved

SETTINGS = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def image(hc18_sample):
    return np.ascontiguousarray(hc18_sample.image[100:300, 200:440])  # small: fast generator


def sam_with(cache: FeatureCache | None, **changes):
    return build_sam({**yaml_config("model", "sam_tiny"), **changes}, "random", cache=cache)


def generate_and_refine(sam, image, **settings):
    """One SaLIP image's SAM work: proposals, then a box prompt from the first two; → (candidates, mask, passes)."""
    before = sam.encoder_passes
    candidates = SamEverythingGenerator(sam, **{**SETTINGS, **settings})(image)
    picked = candidates.select(np.arange(min(2, len(candidates))))
    n = len(picked)
    mask = SamBoxRefiner(sam)(image, Retrieved(picked, ["x"] * n, np.zeros(n), np.arange(n)))
    return candidates, mask, sam.encoder_passes - before


def assert_same(a: Candidates, b: Candidates) -> None:
    for field in ("masks", "boxes", "areas", "predicted_iou", "stability_score"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_later_run_costs_no_encoder_pass_and_gives_the_same_results(tmp_path, image):
    uncached = generate_and_refine(sam_with(None), image)
    first = generate_and_refine(sam_with(FeatureCache(tmp_path)), image)
    later_cache = FeatureCache(tmp_path)
    later = generate_and_refine(sam_with(later_cache), image)  # a new engine: only the disk remembers
    assert uncached[2] == first[2] == 1 and later[2] == 0
    assert later_cache.hits == {"proposals": 1, "embeddings": 1} and not later_cache.misses
    assert len(first[0]) > 0
    for result in (first, later):
        assert_same(result[0], uncached[0])
        np.testing.assert_array_equal(result[1], uncached[1])


def test_embeddings_only_refiner_reuses_and_generator_settings_invalidate_proposals(tmp_path, image):
    generate_and_refine(sam_with(FeatureCache(tmp_path)), image)
    cache = FeatureCache(tmp_path)
    other = generate_and_refine(sam_with(cache), image, points_per_side=3)  # another setting: recomputed
    assert cache.misses == {"proposals": 1} and other[2] == 0  # ... from the cached embedding
    assert_same(other[0], SamEverythingGenerator(sam_with(None), **{**SETTINGS, "points_per_side": 3})(image))
    no_proposals = FeatureCache(tmp_path, proposals=False)
    assert generate_and_refine(sam_with(no_proposals), image)[2] == 0 and "proposals" not in no_proposals.hits


@pytest.mark.parametrize("change", [{"random_seed": 1}, {"decoder_mlp_dim": 96}], ids=["seed", "arch"])
def test_another_model_misses(tmp_path, image, change):
    generate_and_refine(sam_with(FeatureCache(tmp_path)), image)
    cache = FeatureCache(tmp_path)
    assert generate_and_refine(sam_with(cache, **change), image)[2] == 1 and not cache.hits


def test_checkpoint_identity_is_its_content_not_its_path(tmp_path, image):
    tiny = yaml_config("model", "sam_tiny")
    path_a, path_b, path_c = (tmp_path / d / "sam.pth" for d in "abc")  # torch.save writes the name into the file
    for path in (path_a, path_b, path_c):
        path.parent.mkdir()
    torch.save(sam_with(None).sam.state_dict(), path_a)
    torch.save(sam_with(None).sam.state_dict(), path_b)  # same weights, another file
    torch.save(sam_with(None, random_seed=1).sam.state_dict(), path_c)
    passes = []
    for path in (path_a, path_b, path_c):
        sam = build_sam({**tiny, "checkpoint": str(path)}, "pretrained", cache=FeatureCache(tmp_path / "cache"))
        passes.append(generate_and_refine(sam, image)[2])
    assert passes == [1, 0, 1]


def test_size_is_bounded_least_recently_used_first(tmp_path):
    cache = FeatureCache(tmp_path)
    tensor = {"features": torch.arange(250, dtype=torch.float32)}
    for key in ("a", "b"):
        cache.save_embedding(FeatureCache.key(key), tensor)
        os.utime(cache.path("embeddings", FeatureCache.key(key)), (1, 1 if key == "a" else 2))  # b used after a
    cache.max_bytes = int(2.5 * cache.disk_bytes() / 2)  # room for two entries and a half
    assert cache.load_embedding(FeatureCache.key("a")) is not None  # now a is the most recently used
    cache.save_embedding(FeatureCache.key("c"), tensor)
    kept = {k for k in "abc" if cache.path("embeddings", FeatureCache.key(k)).is_file()}
    assert kept == {"a", "c"} and cache.disk_bytes() <= cache.max_bytes


def test_unreadable_file_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureCache.key("x")
    cache.save_candidates(key, Candidates.empty(4, 5))
    assert cache.load_candidates(key).masks.shape == (0, 4, 5)
    cache.path("proposals", key).write_bytes(b"truncated")
    assert cache.load_candidates(key) is None and cache.misses == {"proposals": 1}


def test_jobs_of_one_process_share_engines_and_the_cache(tmp_path):
    builder.release_engines()
    base = SMOKE + ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs", "dataset.top_k=2", "limit=1",
                    "cache.enabled=true", f"cache.dir={tmp_path / 'cache'}"]
    summaries, engines = [], []
    for retriever in ("crop", "box"):
        out = tmp_path / retriever
        summaries.append(run(compose_config(base + [f"retriever={retriever}", f"output_dir={out}"]), out))
        engines.append(builder.held_engines())
    assert summaries[0]["work"]["sam_encoder_passes"] == 1 and summaries[1]["work"]["sam_encoder_passes"] == 0
    assert summaries[0]["work"]["clip_texts_encoded"] == summaries[1]["work"]["clip_texts_encoded"] > 0
    assert all(engines[0][k] is engines[1][k] for k in ("model", "clip"))
    uncached = run(compose_config(base + ["retriever=box", "cache.enabled=false", f"output_dir={tmp_path / 'plain'}"]),
                   tmp_path / "plain")
    assert uncached["work"]["sam_encoder_passes"] == 1 and uncached["dice_mean"] == summaries[1]["dice_mean"]
    assert config_fingerprint(compose_config(base)) == config_fingerprint(compose_config(base[:-2]))  # cache: no part


def test_default_directory_follows_salip_bench_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    assert FeatureCache.from_config({"enabled": True}).root == tmp_path / "features"
    assert FeatureCache.from_config({"enabled": False}) is None


def test_autocast_dtype_is_part_of_every_disk_key():
    """bf16 embeddings and proposals differ from float32 ones: neither may be served for the other."""
    sam = sam_with(None)
    plain = sam.cache_key("embedding", "img")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sam.cache_key("embedding", "img") != plain
    assert sam.cache_key("embedding", "img") == plain


def test_one_hash_per_image_outside_the_harness_scope(tmp_path, image, monkeypatch):
    """The generator's proposals key, its embedding key and its crops' keys share one content hash
    (a crop's key is derived from the image's), without the harness's hashed_once scope."""
    from salip_bench.storage import content_keys

    hashed = []
    array_key = content_keys.array_key
    monkeypatch.setattr(content_keys, "array_key", lambda a, *r: hashed.append(a.shape) or array_key(a, *r))
    sam = sam_with(FeatureCache(tmp_path))
    SamEverythingGenerator(sam, **SETTINGS, crop_n_layers=1)(image)
    assert hashed == [image.shape] and sam.encoder_passes == 5  # the image and its four crops
