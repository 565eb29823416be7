"""The engine kit every family is made of: one memo, one weights resolver, one builder, one role check."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import yaml_config
from salip_bench.engines import builder, weights
from salip_bench.engines.builder import build_engine
from salip_bench.engines.memo import DiskCodec, FeatureMemo
from salip_bench.engines.roles import BoxPromptSegmenter, MissingRoleError, require_role
from salip_bench.engines.weights import WeightsNotFoundError, WeightsSource, resolve_weights
from salip_bench.methods.gt_sam import GtSamMethod
from salip_bench.registry import ENGINES
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.storage.feature_cache import FeatureCache
from test_clip_engines import hf_snapshot, hub_cache  # noqa: F401 - the fixture is used by name

TENSORS = DiskCodec("embeddings", FeatureCache.load_embedding, FeatureCache.save_embedding)


def test_memo_keeps_the_most_recently_used_and_frees_before_computing():
    memo: FeatureMemo[int] = FeatureMemo(2)
    alive = []

    def compute(value: int):
        def run() -> int:
            alive.append(len(memo))
            return value
        return run

    for key in ("a", "b", "a", "c"):  # "a" used again: "b" is the least recently used
        memo.fetch(key, compute(ord(key)))
    assert memo.get("a") == ord("a") and memo.get("b") is None and memo.get("c") == ord("c")
    assert alive == [0, 1, 1]  # "c" was computed after "b" was let go: never more than 2 held
    single: FeatureMemo[int] = FeatureMemo(1)
    single.fetch("x", lambda: 1)
    assert single.fetch("y", lambda: len(single)) == 0  # SAM 3's one image state: the old one goes first


def test_memo_bound_by_weight_keeps_the_newest_even_when_alone_too_big():
    memo: FeatureMemo[list] = FeatureMemo(4, weigh=len)
    memo.put("a", [1, 2, 3])
    memo.put("b", [1, 2])
    assert memo.get("a") is None and memo.get("b") == [1, 2]
    memo.put("c", list(range(9)))
    assert len(memo) == 1 and memo.get("c") == list(range(9))


def test_memo_disk_layer_follows_the_cache_switch_and_size_zero_keeps_nothing_in_memory(tmp_path):
    value = {"x": torch.arange(3)}
    memo = FeatureMemo(0, TENSORS)
    assert memo.fetch("k" * 40, lambda: value) is value and len(memo) == 0  # no cache: computed, not kept
    memo.disk = FeatureCache(tmp_path)
    memo.fetch("k" * 40, lambda: value)
    again = FeatureMemo(0, TENSORS)
    again.disk = FeatureCache(tmp_path)
    assert torch.equal(again.fetch("k" * 40, lambda: pytest.fail("recomputed"))["x"], value["x"])
    again.disk = FeatureCache(tmp_path, embeddings=False)
    assert again.get("k" * 40) is None


def test_memo_widened_holds_more_for_a_block_and_values_used_once_are_not_kept(tmp_path):
    memo: FeatureMemo[int] = FeatureMemo(2)
    with memo.widened(3):
        for key in "abcde":
            memo.fetch(key, lambda key=key: ord(key))
        assert len(memo) == 5
        # a value used once (a propagation frame) is computed, not kept, and lets nothing held go
        assert memo.fetch("f", lambda: 7, remember=False) == 7 and len(memo) == 5 and memo.get("f") is None
        assert memo.fetch("a", lambda: pytest.fail("recomputed"), remember=False) == ord("a")
    assert len(memo) == 2 and memo.get("e") == ord("e")  # back to the bound, least recently used out
    value = {"x": torch.arange(3)}
    disk = FeatureMemo(2, TENSORS)
    disk.disk = FeatureCache(tmp_path)
    disk.fetch("k" * 40, lambda: value, remember=False)  # not in memory, but on disk for the next run
    assert len(disk) == 0 and torch.equal(disk.fetch("k" * 40, lambda: pytest.fail("recomputed"))["x"], value["x"])


def tiny_entries() -> list[tuple[str, dict]]:
    found = {}
    for group in ("model", "clip"):
        for path in sorted((Path(__file__).parents[1] / "src/salip_bench/conf" / group).glob("*tiny*.yaml")):
            cfg = yaml_config(group, path.stem)
            found.setdefault(cfg["engine"], (group, cfg))
    return [found[name] for name in ENGINES.names()]


@pytest.mark.parametrize("group,cfg", tiny_entries(), ids=[cfg["engine"] for _, cfg in tiny_entries()])
def test_every_engine_is_built_reused_and_cached_by_the_one_builder(group, cfg, tmp_path):
    builder.release_engines()
    cache = FeatureCache(tmp_path)
    engine = build_engine(cfg, "random", group, cache, reuse=True)
    identity = engine.identity
    assert engine.chosen_by == group and (identity["engine"], identity["weights"], identity["seed"]) == (
        cfg["engine"], "random", 0)
    assert engine._memos and all(memo.disk is cache for memo in engine._memos)
    for name in engine.COUNTERS:
        setattr(engine, name, 7)
    assert build_engine(cfg, "random", group, None, reuse=True) is engine and not any(engine.counters().values())
    assert all(memo.disk is None for memo in engine._memos)  # the next job's cache setting wins
    assert build_engine({**cfg, "random_seed": 1}, "random", group, reuse=True) is not engine
    builder.release_engines()


def test_a_missing_role_names_the_key_that_picked_the_engine():
    """gt_sam's engine comes from ``model``, the refiner's own from ``model@refiner_model``."""
    for key, chosen in (("model", "model"), ("refiner_model", "model@refiner_model")):
        engine = build_engine(yaml_config("clip", "tiny"), "random", key)  # an engine without the box role
        for stage in (SamBoxRefiner, GtSamMethod):
            expected = rf"\(chosen by {chosen}=\) does not have; choose another {chosen}="
            with pytest.raises(MissingRoleError, match=expected):
                stage(engine)
    require_role(build_engine(yaml_config("model", "medsam_tiny"), "random"), BoxPromptSegmenter, "refiner sam_box")


def test_resolver_order_explicit_folder_then_our_cache_then_the_hub_cache(hub_cache, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path / "ours"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hf_snapshot(hub_cache, "org/model", {"b.bin": b"hub"})
    source = WeightsSource("Test", "a.bin", "model.checkpoint", hub_repo="org/model", hub_files=("a.bin", "b.bin"))
    assert resolve_weights(source) == snapshot / "b.bin"  # the second name of the repo
    (tmp_path / "ours" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ours" / "checkpoints" / "a.bin").write_bytes(b"ours")
    assert resolve_weights(source) == tmp_path / "ours" / "checkpoints" / "a.bin"
    folder = tmp_path / "given"
    folder.mkdir()
    (folder / "b.bin").write_bytes(b"given")
    given = WeightsSource("Test", "a.bin", "model.checkpoint", str(folder), hub_repo="org/model",
                          hub_files=("a.bin", "b.bin"))
    assert resolve_weights(given) == folder / "b.bin"
    (folder / "b.bin").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"model\.checkpoint=.*holds none of \['a.bin', 'b.bin'\]"):
        resolve_weights(given)


def test_resolver_downloads_from_the_hub_when_there_is_no_url(tmp_path, monkeypatch):
    import huggingface_hub

    for name in weights.OFFLINE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    asked = []

    def fake_download(repo: str, name: str) -> str:
        asked.append((repo, name))
        if name == "a.bin":
            raise FileNotFoundError(name)
        (tmp_path / name).write_bytes(b"x")
        return str(tmp_path / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    source = WeightsSource("Test", "a.bin", "model.checkpoint", hub_repo="org/model", hub_files=("a.bin", "b.bin"))
    assert resolve_weights(source) == tmp_path / "b.bin" and asked == [("org/model", "a.bin"), ("org/model", "b.bin")]


@pytest.mark.parametrize("group,name,key", [("model", "sam_vit_b", "model"), ("model", "sam2_hiera_t", "model"),
                                            ("model", "medsam_vit_b", "refiner_model"), ("model", "sam3", "model"),
                                            ("model", "medsam2", "propagator_model"),
                                            ("clip", "vit_l14_openai", "clip"), ("clip", "biomedclip", "clip")])
def test_every_family_fails_offline_the_same_way_naming_its_key(group, name, key, hub_cache, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        build_engine(yaml_config(group, name), "pretrained", key)
    message = str(err.value)
    named = "clip.local_dir" if name == "biomedclip" else f"{key}.checkpoint"
    reason = "it has no download URL" if name == "medsam_vit_b" else "offline mode is set"  # Google Drive only
    assert "not found (looked in" in message and reason in message and f"{named}=" in message
    assert "\n" not in message and (key != "refiner_model" or message.startswith(f"model@refiner_model={name}: "))


def test_unprompted_sam_is_a_role_and_its_masks_are_the_predictors(tiny_sam, hc18_sample):
    from salip_bench.methods.unprompted_sam import UnpromptedSamMethod

    for multimask in (False, True):
        prediction = UnpromptedSamMethod(tiny_sam, multimask)(hc18_sample)
        masks, scores, _ = tiny_sam.prepared(hc18_sample.image).predict(multimask_output=multimask)
        best = int(scores.argmax())
        assert (prediction.mask == masks[best]).all()
        assert prediction.info["sam_predicted_iou"] == round(float(scores[best]), 5)
    medsam = build_engine(yaml_config("model", "medsam_tiny"), "random")
    with pytest.raises(MissingRoleError, match=r"unprompted segmentation .*'medsam_tiny' \(chosen by model=\).*SAM v1"):
        UnpromptedSamMethod(medsam)


def test_medsam_embeddings_come_back_from_the_disk_cache_bit_for_bit(hc18_sample, tmp_path):
    """MedSAM keeps its embeddings in the run's feature cache like SAM and SAM 2.1: a new engine of the
    same model encodes nothing and gives the same masks; another seed misses."""
    import numpy as np

    boxes = np.array([[40, 50, 200, 220]], np.float32)
    cfg = yaml_config("model", "medsam_tiny")
    first = build_engine(cfg, "random", cache=FeatureCache(tmp_path))
    expected = first.segment_boxes(hc18_sample.image, boxes, False)
    later = build_engine(cfg, "random", cache=FeatureCache(tmp_path))
    assert (later.segment_boxes(hc18_sample.image, boxes, False) == expected).all()
    assert first.counters()["encoder_passes"] == 1 and later.counters()["encoder_passes"] == 0
    other = build_engine({**cfg, "random_seed": 1}, "random", cache=FeatureCache(tmp_path))
    other.segment_boxes(hc18_sample.image, boxes, False)
    assert other.counters()["encoder_passes"] == 1
