"""CLIP-family engines: pretrained loading through the real resolution code, offline, from tiny weights
written in each official file name and cache layout; missing weights fail fast naming what is missing."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from conftest import yaml_config
from salip_bench.engines.biomedclip_engine import ASSETS, build_custom_text_clip
from salip_bench.engines.builder import build_engine
from salip_bench.engines.weights import WeightsNotFoundError, cache_dir

BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# open_clip's ViT-L-14 config shrunk: every other piece (pretrained tag, file names, hub repo, loader) is real.
TINY_VIT_L14 = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def child_cpu_seconds() -> float:
    """CPU seconds used so far by this process's finished children (user + system)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hf_snapshot(hub_cache: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """Write ``files`` into the Hugging Face cache layout models--ORG--NAME/snapshots/REV/ with refs/main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    return path


def embeddings(engine_or_model, preprocess=None, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (80, 96, 3), dtype=np.uint8) for _ in range(2)]
    texts = ["the fetal head", "a dark lung field on a chest x-ray"]
    if preprocess is None:
        return engine_or_model.encode_images(images), engine_or_model.encode_texts(texts)
    from PIL import Image

    with torch.no_grad():
        batch = torch.stack([preprocess(Image.fromarray(i)) for i in images])
        image = torch.nn.functional.normalize(engine_or_model.encode_image(batch), dim=-1)
        text = torch.nn.functional.normalize(engine_or_model.encode_text(tokenizer(texts)), dim=-1)
    return image, text


@pytest.fixture
def tiny_vit_l14(monkeypatch):
    """open_clip's ViT-L-14 with tiny sizes and its state dict (what a released file would hold)."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-L-14", TINY_VIT_L14)
    torch.manual_seed(1)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained=None, force_quick_gelu=True)
    return model.eval(), preprocess


@pytest.mark.parametrize("layout", ["openai_file_in_our_cache", "hf_cache", "explicit_path"])
def test_openai_clip_loads_pretrained_offline_from_each_place(layout, tiny_vit_l14, hub_cache, tmp_path):
    model, preprocess = tiny_vit_l14
    cfg = yaml_config("clip", "vit_l14_openai")
    weights = tmp_path / "weights.bin"
    torch.save(model.state_dict(), weights)
    if layout == "openai_file_in_our_cache":  # the file name of OpenAI's URL, where resolve looks first
        cache_dir().mkdir(parents=True, exist_ok=True)
        target = cache_dir() / "ViT-L-14.pt"
        shutil.copy(weights, target)
    elif layout == "hf_cache":  # open_clip's hub mirror of the OpenAI weights
        target = hf_snapshot(hub_cache, "timm/vit_large_patch14_clip_224.openai",
                             {"open_clip_pytorch_model.bin": weights}) / "open_clip_pytorch_model.bin"
    else:
        target = weights
        cfg["checkpoint"] = str(weights)
    try:
        engine = build_engine(cfg, "pretrained", "clip")
    finally:
        if layout == "openai_file_in_our_cache":
            target.unlink()
    assert engine.identity["file"] == str(target) and engine.identity["weights"] == "pretrained"
    assert engine.identity["engine"] == "open_clip" and len(engine.identity["sha256"]) == 64
    expected = embeddings(model, preprocess, open_clip.get_tokenizer("ViT-L-14"))
    for got, want in zip(embeddings(engine), expected):
        torch.testing.assert_close(got, want)


def test_openai_clip_missing_offline_names_file_and_key(hub_cache):
    with pytest.raises(WeightsNotFoundError, match=r"ViT-L-14\.pt.*clip\.checkpoint"):
        build_engine(yaml_config("clip", "vit_l14_openai"), "pretrained", "clip")


def write_tiny_biomedclip(hub_cache: Path, tmp_path: Path, safetensors: bool) -> torch.nn.Module:
    """Tiny random BiomedCLIP in the two hub repos' layouts; returns the model the files hold."""
    tiny = yaml_config("clip", "biomedclip_tiny")
    model_cfg = {**tiny["model_cfg"], "text_cfg": {**tiny["model_cfg"]["text_cfg"], "hf_model_name": BIOMEDBERT,
                                                    "hf_tokenizer_name": BIOMEDBERT}}
    released_preprocess = yaml_config("clip", "biomedclip")["preprocess_cfg"]
    torch.manual_seed(2)
    model, _, _ = build_custom_text_clip(model_cfg, ASSETS / "bert_tiny", ASSETS / "bert_tiny", released_preprocess)
    config = json.dumps({"model_cfg": model_cfg, "preprocess_cfg": released_preprocess}).encode()
    if safetensors:
        from safetensors.torch import save_file

        weights, name = tmp_path / "w.safetensors", "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    else:
        weights, name = tmp_path / "w.bin", "open_clip_pytorch_model.bin"
        torch.save(model.state_dict(), weights)
    hf_snapshot(hub_cache, BIOMEDCLIP, {"open_clip_config.json": config, name: weights})
    hf_snapshot(hub_cache, BIOMEDBERT, {f: ASSETS / "bert_tiny" / f
                                        for f in ("config.json", "vocab.txt", "tokenizer_config.json")})
    return model.eval()


@pytest.mark.parametrize("safetensors", [False, True], ids=["bin", "safetensors"])
def test_biomedclip_loads_pretrained_offline_from_the_hf_cache(safetensors, hub_cache, tmp_path):
    model = write_tiny_biomedclip(hub_cache, tmp_path, safetensors)
    engine = build_engine(yaml_config("clip", "biomedclip"), "pretrained", "clip")
    assert engine.identity["engine"] == "biomedclip" and engine.identity["weights"] == "pretrained"
    assert f"models--{BIOMEDCLIP.replace('/', '--')}" in engine.identity["file"]
    # open_clip's own hf-hub loading of the same cache gives the same model and preprocessing.
    reference, preprocess = open_clip.create_model_from_pretrained(f"hf-hub:{BIOMEDCLIP}")
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{BIOMEDCLIP}")
    for got, want in zip(embeddings(engine), embeddings(reference.eval(), preprocess, tokenizer)):
        torch.testing.assert_close(got, want)
    for got, want in zip(embeddings(engine), embeddings(model, preprocess, tokenizer)):
        torch.testing.assert_close(got, want)


def test_biomedclip_loads_from_explicit_directories(hub_cache, tmp_path):
    write_tiny_biomedclip(hub_cache, tmp_path, safetensors=False)
    snapshots = {repo: next((hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
                 for repo in (BIOMEDCLIP, BIOMEDBERT)}
    local, text = tmp_path / "biomedclip", tmp_path / "biomedbert"
    shutil.copytree(snapshots[BIOMEDCLIP], local)
    shutil.copytree(snapshots[BIOMEDBERT], text)
    from_cache = build_engine(yaml_config("clip", "biomedclip"), "pretrained", "clip")
    shutil.rmtree(hub_cache)
    hub_cache.mkdir()
    engine = build_engine(yaml_config("clip", "biomedclip") | {"local_dir": str(local), "text_dir": str(text)},
                        "pretrained", "clip")
    assert engine.identity["file"].startswith(str(local)) and engine.identity["text_tower"] == str(text)
    for got, want in zip(embeddings(engine), embeddings(from_cache)):
        torch.testing.assert_close(got, want)


def test_biomedclip_missing_offline_names_repo_and_key_fast(hub_cache):
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match=rf"{BIOMEDCLIP}.*clip\.local_dir.*huggingface-cli download"):
        build_engine(yaml_config("clip", "biomedclip"), "pretrained", "clip")
    assert time.monotonic() - start < 60


def test_biomedclip_missing_text_tower_names_its_repo(hub_cache, tmp_path):
    write_tiny_biomedclip(hub_cache, tmp_path, safetensors=False)
    shutil.rmtree(hub_cache / f"models--{BIOMEDBERT.replace('/', '--')}")
    with pytest.raises(WeightsNotFoundError, match=rf"{BIOMEDBERT}.*clip\.text_dir"):
        build_engine(yaml_config("clip", "biomedclip"), "pretrained", "clip")


def test_tiny_variants_refuse_pretrained():
    for name in ("tiny", "biomedclip_tiny"):
        with pytest.raises(ValueError, match="weights=random"):
            build_engine(yaml_config("clip", name), "pretrained", "clip")


def test_open_clip_engine_behaviour_unchanged_for_tiny(tiny_clip):
    """The move into engines/ kept clip=tiny's weights: same seed, same embeddings as open_clip's CLIP."""
    from salip_bench.engines.clip_engine import build_tiny_clip

    torch.manual_seed(0)
    model, preprocess, tokenizer = build_tiny_clip(**yaml_config("clip", "tiny")["tiny"])
    for got, want in zip(embeddings(tiny_clip), embeddings(model.eval(), preprocess, tokenizer)):
        torch.testing.assert_close(got, want)


def test_missing_biomedclip_offline_exits_fast_from_the_command_line(tmp_path, tiny_sam):
    """SAM's weights present (tiny, in our cache), BiomedCLIP's not: the run stops naming the hub repo."""
    import os
    import subprocess
    import sys

    from conftest import CXR, REPO

    checkpoints = tmp_path / "cache" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(tiny_sam.sam.state_dict(), checkpoints / "sam_tiny.pth")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_hub"),
           "SALIP_BENCH_CACHE": str(tmp_path / "cache")}
    start = child_cpu_seconds()
    result = subprocess.run([str(Path(sys.executable).parent / "salip-bench"), "model=sam_tiny", "clip=biomedclip",
                             "dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs", "logger=none",
                             "cache.enabled=false", f"output_dir={tmp_path / 'o'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # within a minute of the process's own time: wall time on a shared, loaded machine says little
    assert result.returncode != 0 and child_cpu_seconds() - start < 60
    for needle in (BIOMEDCLIP, "clip.local_dir", "huggingface-cli download"):
        assert needle in result.stderr + result.stdout, needle
