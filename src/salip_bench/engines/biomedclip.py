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
from salip_bench.engines.weights import WeightsNotFoundError, file_sha256, is_offline
from salip_bench.registry import ENGINES

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
TEXT_CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "tokenizer.json")


def _advice(what: str, repo: str, key: str) -> str:
    return (f"run `huggingface-cli download {repo}` on a machine with internet and copy the Hugging Face cache "
            f"(HF_HUB_CACHE, default ~/.cache/huggingface/hub) here, or pass {key}=/dir/with/the/files "
            f"(`huggingface-cli download {repo} --local-dir DIR`). For an offline smoke run use "
            f"clip=biomedclip_tiny weights=random (its numbers are meaningless). [{what}]")


def cached_file(repo: str, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` present in the HF cache snapshot of ``repo`` (no network).

    Args:
        repo: the Hugging Face repo id.
        names: file names to look for, preferred first.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def hub_file(repo: str, names: tuple[str, ...], key: str, what: str) -> Path:
    """``names[0]`` (or the first alternative found) of ``repo``: HF cache, else download unless offline.

    Args:
        repo: the Hugging Face repo id.
        names: file names, preferred first.
        key: the config key that takes a local folder instead, named in errors.
        what: the model, as errors name it.

    Raises:
        WeightsNotFoundError: not cached and not downloadable.
    """
    cached = cached_file(repo, names)
    if cached is not None:
        return cached
    if is_offline():
        raise WeightsNotFoundError(f"{what}: none of {list(names)} of hub repo {repo} is in the Hugging Face cache "
                                   f"and offline mode is set ({key} not given); " + _advice(what, repo, key))
    from huggingface_hub import hf_hub_download

    errors = []
    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as err:  # noqa: BLE001 - the hub client raises many types (missing file, network)
            errors.append(f"{name}: {err}")
    raise WeightsNotFoundError(f"{what}: could not download {list(names)} of hub repo {repo} ({'; '.join(errors)}); "
                               + _advice(what, repo, key))


def local_file(directory: str, names: tuple[str, ...], key: str, what: str) -> Path:
    """The first of ``names`` in an explicit directory, else an error naming it and the key.

    Args:
        directory: the folder the user gave.
        names: file names, preferred first.
        key: the config key that gave it.
        what: the model, as errors name it.
    """
    root = Path(directory).expanduser()
    for name in names:
        if (root / name).is_file():
            return root / name
    raise WeightsNotFoundError(f"{what}: {key}={root} holds none of {list(names)}")


def resolve_biomedclip(cfg: dict) -> tuple[Path, Path, Path]:
    """(open_clip_config.json, weights file, text-tower directory) of a pretrained BiomedCLIP.

    Order: explicit ``clip.local_dir`` → HF cache of ``clip.hub_id`` → download (unless offline); the
    text tower: explicit ``clip.text_dir`` → HF cache of its ``hf_model_name`` → download.

    Args:
        cfg: a ``conf/clip/biomedclip*.yaml`` entry.

    Raises:
        WeightsNotFoundError: a file is missing; the message names it and the key to set.
    """
    repo, what = cfg["hub_id"], f"BiomedCLIP {cfg['hub_id']}"
    if cfg.get("local_dir"):
        config = local_file(cfg["local_dir"], (CONFIG_FILE,), "clip.local_dir", what)
        weights = local_file(cfg["local_dir"], WEIGHT_FILES, "clip.local_dir", what)
    else:
        config = hub_file(repo, (CONFIG_FILE,), "clip.local_dir", what)
        weights = hub_file(repo, WEIGHT_FILES, "clip.local_dir", what)
    text_repo = json.loads(config.read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    what_text = f"BiomedCLIP text tower {text_repo}"
    if cfg.get("text_dir"):
        text_config = local_file(cfg["text_dir"], (TEXT_CONFIG_FILE,), "clip.text_dir", what_text)
    else:
        text_config = hub_file(text_repo, (TEXT_CONFIG_FILE,), "clip.text_dir", what_text)
        for name in TOKENIZER_FILES[:2]:  # the rest are optional for a BERT WordPiece tokenizer
            hub_file(text_repo, (name,), "clip.text_dir", what_text)
    return config, weights, text_config.parent


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
def build_biomedclip_engine(cfg: dict, weights: str, cache: object = None) -> ClipEngine:
    """Build BiomedCLIP (or ``biomedclip_tiny``) from a ``conf/clip/*.yaml`` entry.

    Args:
        cfg: the clip group entry: ``hub_id`` (null for tiny), ``local_dir``/``text_dir`` (explicit
            directories), ``model_cfg``/``preprocess_cfg`` (the architecture used with random weights;
            pretrained ones take the repo's ``open_clip_config.json``), ``random_text_tower`` (packaged
            text config under engines/assets used with random weights), ``random_seed``.
        weights: ``pretrained`` or ``random``.
        cache: unused.
    """
    seed = int(cfg.get("random_seed", 0))
    name = cfg.get("hub_id") or "biomedclip_tiny"
    if weights == "random":
        torch.manual_seed(seed)
        text_dir = ASSETS / cfg["random_text_tower"]
        model, preprocess, tokenizer = build_custom_text_clip(cfg["model_cfg"], text_dir, ASSETS / "bert_tiny",
                                                              cfg.get("preprocess_cfg") or {})
        return ClipEngine(model, preprocess, tokenizer,
                          {"engine": "biomedclip", "model": name, "weights": "random", "seed": seed,
                           "text_tower": cfg["random_text_tower"]})
    if not cfg.get("hub_id"):
        raise ValueError("clip=biomedclip_tiny has no pretrained weights; use it with weights=random")
    config_path, weights_path, text_dir = resolve_biomedclip(cfg)
    released = json.loads(config_path.read_text())
    model, preprocess, tokenizer = build_custom_text_clip(released["model_cfg"], text_dir, text_dir,
                                                          released.get("preprocess_cfg") or {})
    open_clip.load_checkpoint(model, str(weights_path))
    log.info("BiomedCLIP loaded from %s (text tower %s)", weights_path, text_dir)
    return ClipEngine(model.eval(), preprocess, tokenizer,
                      {"engine": "biomedclip", "model": name, "weights": "pretrained", "file": str(weights_path),
                       "sha256": file_sha256(weights_path), "text_tower": str(text_dir)})
