"""SAM 3 engine and the ``sam3_text`` method: hub-layout loading offline, missing weights, multiruns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CXR, REPO, yaml_config
from salip_bench.engines.builder import build_engine
from salip_bench.engines.weights import WeightsNotFoundError
from test_clip_engines import child_cpu_seconds, hf_snapshot, hub_cache  # noqa: F401 - the fixture is used by name

BIN = Path(sys.executable).parent / "salip-bench"
CXR_ARGS = ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs", "dataset.top_k=2", "logger=none",
            "cache.enabled=false"]


@pytest.fixture(scope="module")
def tiny_sam3():
    return build_engine(yaml_config("model", "sam3_tiny"), "random")


def sam3_with_tiny_arch() -> dict:
    """``model=sam3`` (the released entry: repo, file, resolution) with the tiny sizes."""
    return yaml_config("model", "sam3") | {"arch": yaml_config("model", "sam3_tiny")["arch"]}


def test_segment_text_returns_sorted_instances_at_image_size(tiny_sam3, cxr_sample):
    tiny_sam3.reset()
    masks, scores, boxes = tiny_sam3.segment_text(cxr_sample.image, "lungs", min_score=0.0, max_instances=5)
    assert masks.shape == (5, *cxr_sample.image.shape[:2]) and masks.dtype == bool
    assert scores.dtype == np.float32 and boxes.shape == (5, 4) and np.all(np.diff(scores) <= 0)
    everything, all_scores, _ = tiny_sam3.segment_text(cxr_sample.image, "lungs", min_score=0.0)
    assert len(everything) == yaml_config("model", "sam3_tiny")["arch"]["num_queries"]
    np.testing.assert_array_equal(all_scores[:5], scores)  # top-k before upsampling = top-k of all
    none, _, _ = tiny_sam3.segment_text(cxr_sample.image, "lungs", min_score=1.0)
    assert none.shape == (0, *cxr_sample.image.shape[:2])
    assert tiny_sam3.counters() == {"encoder_passes": 1, "text_prompts": 3}  # one backbone pass per image
    tiny_sam3.reset()
    assert tiny_sam3.counters() == {"encoder_passes": 0, "text_prompts": 0}


@pytest.mark.parametrize("where", ["hf_cache", "explicit_path"])
def test_sam3_loads_pretrained_offline_from_hub_layout(where, hub_cache, tmp_path, tiny_sam3, cxr_sample):  # noqa: F811
    """Tiny random weights in upstream's checkpoint layout ({"model": {"detector.*", "tracker.*"}}) in the
    hub repo facebook/sam3 (sam3.pt + config.json) load through the same resolution code as the release."""
    state = {f"detector.{k}": v for k, v in tiny_sam3.model.state_dict().items()}
    state["tracker.some_video_weight"] = torch.zeros(2)  # the video tracker's keys are not the image model's
    checkpoint = tmp_path / "sam3.pt"
    torch.save({"model": state}, checkpoint)
    cfg = sam3_with_tiny_arch()
    if where == "hf_cache":
        snapshot = hf_snapshot(hub_cache, "facebook/sam3", {"sam3.pt": checkpoint, "config.json": b"{}"})
        expected_file = snapshot / "sam3.pt"
    else:
        cfg["checkpoint"], expected_file = str(checkpoint), checkpoint
    engine = build_engine(cfg, "pretrained")
    assert engine.identity["file"] == str(expected_file) and engine.identity["hub_repo"] == "facebook/sam3"
    assert len(engine.identity["sha256"]) == 64 and engine.identity["weights"] == "pretrained"
    for got, want in zip(engine.segment_text(cxr_sample.image, "lungs", 0.0, 3),
                         tiny_sam3.segment_text(cxr_sample.image, "lungs", 0.0, 3)):
        np.testing.assert_array_equal(got, want)


def test_sam3_checkpoint_of_another_size_is_an_error_not_random(tmp_path):
    checkpoint = tmp_path / "sam3.pt"
    torch.save({"model": {"detector.transformer.nonsense": torch.zeros(1)}}, checkpoint)
    with pytest.raises(WeightsNotFoundError, match="does not fit model.arch"):
        build_engine(sam3_with_tiny_arch() | {"checkpoint": str(checkpoint)}, "pretrained")


def test_sam3_tiny_refuses_pretrained():
    with pytest.raises(ValueError, match="weights=random"):
        build_engine(yaml_config("model", "sam3_tiny"), "pretrained")


def test_missing_sam3_weights_offline_exit_fast_naming_repo_key_and_licence(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_hub"),
           "SALIP_BENCH_CACHE": str(tmp_path / "cache")}
    start = child_cpu_seconds()
    result = subprocess.run([str(BIN), "method=sam3_text", "model=sam3", *CXR_ARGS, f"output_dir={tmp_path / 'o'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # within a minute of the process's own time: wall time on a shared, loaded machine says little
    assert result.returncode != 0 and child_cpu_seconds() - start < 60
    for needle in ("facebook/sam3", "sam3.pt", "model.checkpoint", "huggingface-cli login", "SAM License"):
        assert needle in result.stderr + result.stdout, needle


def test_sam3_text_needs_a_text_engine(tiny_sam):
    from salip_bench.methods.sam3_text import Sam3TextMethod

    with pytest.raises(ValueError, match="model=sam3"):
        Sam3TextMethod(tiny_sam, {"lung": ["a lung"]}, {"lung": 1})


def test_sam3_text_prompts_and_union(tiny_sam3, cxr_sample):
    from salip_bench.methods.sam3_text import Sam3TextMethod

    sentences = {"lung": ["a dark lung field", "a radiolucent lung"], "left_lung": ["the left lung"]}
    method = Sam3TextMethod(tiny_sam3, sentences, {"lung": 2, "left_lung": 1}, prompt="both", min_score=0.0)
    assert method.prompts == {"lung": ["lung", "a dark lung field", "a radiolucent lung"],
                              "left_lung": ["left lung", "the left lung"]}
    tiny_sam3.reset()
    prediction = method(cxr_sample)
    assert prediction.info["instance_classes"] == ["lung", "lung", "left_lung"]
    assert prediction.info["n_prompts"] == 5 and tiny_sam3.counters()["encoder_passes"] == 1
    expected, scores = np.zeros_like(prediction.mask), []
    for name, k in (("lung", 2), ("left_lung", 1)):  # each class: the best k over all of its prompts
        results = [tiny_sam3.segment_text(cxr_sample.image, text, 0.0, k) for text in method.prompts[name]]
        pooled = np.concatenate([r[1] for r in results])
        best = np.argsort(-pooled, kind="stable")[:k]
        expected |= np.concatenate([r[0] for r in results])[best].any(0)
        scores += pooled[best].tolist()
    np.testing.assert_array_equal(prediction.mask, expected)
    np.testing.assert_allclose(prediction.info["instance_scores"], scores, atol=1e-5)


def test_multirun_of_sam3_text_inside_salip_bench(tmp_path):
    """SAM 3 next to Hydra: a two-job multirun (prompt modes) runs, each job records its instances."""
    out = tmp_path / "multi"
    result = subprocess.run([str(BIN), "-m", "method=sam3_text", "model=sam3_tiny", "weights=random", *CXR_ARGS,
                             "limit=1", "method.min_score=0.0", "method.prompt=class_name,both", f"output_dir={out}"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, prompts in (("0", 1), ("1", 9)):
        summary = json.loads((out / job / "summary.json").read_text())
        assert summary["n_ok"] == 1 and summary["n_failed"] == 0
        assert summary["weights_identity"]["sam"] == {"engine": "sam3", "model": "sam3_tiny", "weights": "random",
                                                      "seed": 0}
        import pandas as pd

        row = pd.read_csv(out / job / "results.csv").iloc[0]
        assert row["n_prompts"] == prompts and len(json.loads(row["instance_scores"])) == 2
        assert row["sam_encoder_passes"] == 1


@pytest.mark.slow
def test_released_sizes_build_upstreams_architecture():
    """With conf/model/sam3.yaml's sizes our builder makes upstream's build_sam3_image_model modules:
    same parameter/buffer names and shapes (1134 tensors, 840.5 M parameters; ~3 min, ~7 GB)."""
    import open_clip
    import sam3.model.decoder as decoder
    import sam3.model.position_encoding as position_encoding
    from sam3.model_builder import build_sam3_image_model

    from salip_bench.engines.sam3_model import build_sam3_image

    ours = build_sam3_image(yaml_config("model", "sam3")["arch"], open_clip.tokenizer.default_bpe())
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    del ours
    zeros = torch.zeros  # upstream's builder precomputes caches on "cuda"; let them go to the CPU here
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(position_encoding.torch, "zeros", lambda *a, **k: zeros(*a, **{**k, "device": "cpu"}))
        patch.setattr(decoder.TransformerDecoder, "_get_coords",
                      staticmethod(lambda h, w, device: (torch.arange(h) / h, torch.arange(w) / w)))
        theirs = build_sam3_image_model(bpe_path=open_clip.tokenizer.default_bpe(), device="cpu", load_from_HF=False)
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
