"""Engine ``biomedclip``: BiomedCLIP (ViT-B/16 + PubMedBERT, open_clip's ``CustomTextCLIP``) and a tiny one.

BiomedCLIP lives on the Hugging Face hub as an open_clip model
(``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``: ``open_clip_config.json`` +
``open_clip_pytorch_model.bin``); its text tower's configuration and tokenizer come from a second
repo (``text_cfg.hf_model_name``) through ``transformers``. Both are resolved to local directories
first — explicit ``clip.local_dir`` / ``clip.text_dir``, else the HF cache, else a download unless
offline — so ``HF_HUB_OFFLINE=1`` runs work from the cache and a missing file names the repo.
The model is then built exactly as open_clip builds it and loaded with open_clip's checkpoint loader.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch

from salip_bench.engines.clip_engine import ClipEngine
from salip_bench.engines.weights import WeightsSource, pretrained_or_random, resolve_weights, weights_identity
from salip_bench.registry import ENGINES

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
TEXT_CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "tokenizer.json")


def hub_source(what: str, repo: str, names: tuple[str, ...], key: str, explicit: str | None) -> WeightsSource:
    """One file of a hub repo (``names``: its alternatives, preferred first), or of the folder ``key`` gives.

    Args:
        what: the model, as messages name it.
        repo: the Hugging Face repo id.
        names: file names, preferred first.
        key: the config key that takes a local folder instead (``clip.local_dir``, ``clip.text_dir``).
        explicit: that folder, or None.
    """
    advice = (f"Or copy the Hugging Face cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) of {repo} here, "
              f"or pass {key}=/dir/with/the/files (`huggingface-cli download {repo} --local-dir DIR`). For an "
              "offline smoke run use clip=biomedclip_tiny weights=random (its numbers are meaningless).")
    return WeightsSource(what, f"{repo.replace('/', '--')}/{names[0]}", key, explicit, hub_repo=repo, hub_files=names,
                         advice=advice)


def resolve_biomedclip(cfg: dict) -> tuple[Path, Path, Path]:
    """(open_clip_config.json, weights file, text-tower directory) of a pretrained BiomedCLIP, each
    resolved as every family's weights: explicit ``clip.local_dir`` → caches → hub download; the text
    tower: explicit ``clip.text_dir`` → caches of its ``hf_model_name`` → hub download.

    Args:
        cfg: a ``conf/clip/biomedclip*.yaml`` entry.

    Raises:
        WeightsNotFoundError: a file is missing; the message names it and the key to set.
    """
    repo, what = cfg["hub_id"], f"BiomedCLIP {cfg['hub_id']}"
    config = resolve_weights(hub_source(what, repo, (CONFIG_FILE,), "clip.local_dir", cfg.get("local_dir")))
    weights = resolve_weights(hub_source(what, repo, WEIGHT_FILES, "clip.local_dir", cfg.get("local_dir")))
    text_repo = json.loads(config.read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    what_text = f"BiomedCLIP text tower {text_repo}"
    text_files = (TEXT_CONFIG_FILE,) if cfg.get("text_dir") else (TEXT_CONFIG_FILE, *TOKENIZER_FILES[:2])
    # the other tokenizer files are optional for a BERT WordPiece tokenizer
    found = [resolve_weights(hub_source(what_text, text_repo, (name,), "clip.text_dir", cfg.get("text_dir")))
             for name in text_files]
    return config, weights, found[0].parent


def build_custom_text_clip(model_cfg: dict, text_dir: Path, tokenizer_dir: Path,
                           preprocess_cfg: dict) -> tuple[torch.nn.Module, object, object]:
    """open_clip's ``CustomTextCLIP`` with its HF text tower read from ``text_dir`` (config.json) and
    the tokenizer from ``tokenizer_dir``; the model's weights are whatever the seed makes them.

    Args:
        model_cfg: open_clip's ``model_cfg`` (from open_clip_config.json).
        text_dir: folder of the text tower's config.json.
        tokenizer_dir: folder of the tokenizer files.
        preprocess_cfg: open_clip's ``preprocess_cfg``.

    Returns:
        ``(model, eval transform, tokenizer)``.
    """
    model_cfg = copy.deepcopy(model_cfg)
    text_cfg = model_cfg["text_cfg"]
    text_cfg.update(hf_model_name=str(text_dir), hf_tokenizer_name=str(tokenizer_dir), hf_model_pretrained=False)
    model = open_clip.model.CustomTextCLIP(**model_cfg).eval()
    # As open_clip's factory: defaults, then the repo's preprocess_cfg, the size from the vision tower.
    pp = {**asdict(open_clip.transform.PreprocessCfg()), **preprocess_cfg, "size": model.visual.image_size}
    open_clip.model.set_model_preprocess_cfg(model, pp)
    preprocess = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**pp), is_train=False)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_dir), context_length=text_cfg.get("context_length", 77),
                                                **text_cfg.get("tokenizer_kwargs", {}))
    return model, preprocess, tokenizer


@ENGINES.register("biomedclip")
def build_biomedclip_engine(cfg: dict, weights: str, key: str = "clip") -> ClipEngine:
    """Build BiomedCLIP (or ``biomedclip_tiny``) from a ``conf/clip/*.yaml`` entry (build it with
    :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the clip group entry: ``hub_id`` (null for tiny), ``local_dir``/``text_dir`` (explicit
            directories), ``model_cfg``/``preprocess_cfg`` (the architecture used with random weights;
            pretrained ones take the repo's ``open_clip_config.json``), ``random_text_tower`` (packaged
            text config under engines/assets used with random weights), ``random_seed``.
        weights: ``pretrained`` or ``random``.
        key: the config key that picked it (its folders are ``clip.local_dir`` / ``clip.text_dir``).
    """
    name = cfg.get("hub_id") or "biomedclip_tiny"
    files = pretrained_or_random(cfg, weights, (lambda: resolve_biomedclip(cfg)) if cfg.get("hub_id") else None)
    seed = int(cfg.get("random_seed", 0))
    if files is None:
        text_dir = ASSETS / cfg["random_text_tower"]
        model, preprocess, tokenizer = build_custom_text_clip(cfg["model_cfg"], text_dir, ASSETS / "bert_tiny",
                                                              cfg.get("preprocess_cfg") or {})
        identity = weights_identity("biomedclip", name, None, seed, text_tower=cfg["random_text_tower"])
        return ClipEngine(model, preprocess, tokenizer, identity, cfg)
    config_path, weights_path, text_dir = files
    released = json.loads(config_path.read_text())
    model, preprocess, tokenizer = build_custom_text_clip(released["model_cfg"], text_dir, text_dir,
                                                          released.get("preprocess_cfg") or {})
    open_clip.load_checkpoint(model, str(weights_path))
    log.info("BiomedCLIP loaded from %s (text tower %s)", weights_path, text_dir)
    identity = weights_identity("biomedclip", name, weights_path, text_tower=str(text_dir))
    return ClipEngine(model.eval(), preprocess, tokenizer, identity, cfg)
