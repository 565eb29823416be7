"""Engine ``open_clip``: any open_clip model name + pretrained tag (weights resolved like SAM's), and a tiny one.

``ClipEngine`` owns the model, its eval transform and tokenizer, returns L2-normalised
embeddings and counts the images and texts it encodes (the run summary reports them). It is the
image/text embedding role (:class:`~salip_bench.engines.roles.ImageTextEmbedder`); the
``biomedclip`` engine builds the same class around BiomedCLIP.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.engines.clip_cache import ClipEmbeddingCache
from salip_bench.engines.weights import (weights_id, WeightsNotFoundError, cache_dir, checkpoint_errors, file_sha256,
                                        how_to_provide, is_offline, search_dirs)
from salip_bench.registry import ENGINES

log = logging.getLogger(__name__)
_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# CPU kernels embed pictures in groups of 4: a picture in a batch's incomplete last group gets other
# rounding (last bits) than in a full group, so an embedding would depend on how many pictures were
# batched with it. In forwards of any multiple of 4 pictures every picture's embedding is the same
# bit for bit, wherever it sits (tests/test_clip_cache.py).
PICTURE_GROUP = 4


class ClipEngine(nn.Module):
    """A CLIP model with its preprocessing; ``encode_*`` return L2-normalised float32 embeddings."""

    def __init__(self, model: nn.Module, preprocess, tokenizer, identity: dict, model_id: dict | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        # What the embeddings depend on (weights, architecture), part of every embedding-cache key.
        self.model_id = model_id or weights_id(identity)
        self.embedding_cache = ClipEmbeddingCache()
        self.images_encoded = 0
        self.texts_encoded = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset(self) -> None:
        """Zero the work counters and forget the remembered embeddings (the disk cache keeps them), as
        when just built, for reuse by another run."""
        self.images_encoded = 0
        self.texts_encoded = 0
        self.embedding_cache.clear()

    def use_cache(self, cache: FeatureCache | None) -> None:
        """Keep visual-prompt embeddings in ``cache`` too (None: in memory only)."""
        self.embedding_cache.disk = cache

    def counters(self) -> dict[str, int]:
        """Work done since built or reset."""
        return {"images_encoded": self.images_encoded, "texts_encoded": self.texts_encoded}

    def prepare(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """CLIP's eval transform (resize, centre crop, normalise) of one RGB picture, as a (3, S, S) tensor."""
        return self.preprocess(image if isinstance(image, Image.Image) else to_pil(image))

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray | Image.Image], batch_size: int = 32,
                      workers: int = 1) -> torch.Tensor:
        """Embed RGB pictures.

        Args:
            images: (H, W, 3) uint8 arrays or PIL images.
            batch_size: pictures per forward.
            workers: preprocessing threads.

        Returns:
            (N, D) unit-norm embeddings on CPU.
        """
        return self.encode_built(len(images), images.__getitem__, batch_size, workers)

    @torch.no_grad()
    def encode_built(self, count: int, build: Callable[[int], np.ndarray | Image.Image], batch_size: int = 32,
                     workers: int = 1) -> torch.Tensor:
        """Embed the pictures ``build(0)`` … ``build(count - 1)``; returns (N, D) on CPU.

        Pictures are built and preprocessed by ``workers`` threads one batch at a time, so at most
        one batch of full-size pictures is alive. Threads pay off because building (NumPy/OpenCV)
        and resizing (PIL) release the GIL: preprocessing, not the CLIP forward, dominates a
        retriever's time on CPU. Results do not depend on ``workers``, nor on which other pictures
        share a batch (forwards are padded to whole groups of PICTURE_GROUP), so an embedding from
        the cache is the one a fresh encoding gives.

        Args:
            count: how many pictures.
            build: picture ``i`` from its index.
            batch_size: pictures per forward.
            workers: threads building and preprocessing pictures.

        Returns:
            (N, D) unit-norm embeddings on CPU.
        """
        out = []
        with ThreadPoolExecutor(max(1, workers)) as pool:
            parallel_map = pool.map if workers > 1 else map
            for start in range(0, count, batch_size):
                pictures = parallel_map(lambda i: self.prepare(build(i)), range(start, min(start + batch_size, count)))
                batch = torch.stack(list(pictures)).to(self.device)
                count_real = batch.shape[0]
                padding = -count_real % PICTURE_GROUP
                if padding:  # copies of the last picture, thrown away: every picture is in a full group
                    batch = torch.cat([batch, batch[-1:].expand(padding, *batch.shape[1:])])
                embedded = self.model.encode_image(batch)[:count_real]
                out.append(nn.functional.normalize(embedded.float(), dim=-1).cpu())
                self.images_encoded += count_real
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings, (N, D) on CPU, of ``texts`` (the organ's sentences)."""
        tokens = self.tokenizer(texts).to(self.device)
        self.texts_encoded += len(texts)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    @property
    def embed_dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)  # CLIP; a custom (HF) text tower has its own
        return int(projection.shape[-1]) if projection is not None else int(self.model.text.output_dim)


def build_tiny_clip(embed_dim: int, image_size: int, vision_width: int, vision_layers: int, patch_size: int,
                    text_width: int, text_layers: int, heads: int) -> tuple[nn.Module, object, object]:
    """An open_clip ``CLIP`` with a few narrow layers, for tests; uses the standard BPE tokenizer.

    Args:
        embed_dim: the joint embedding width.
        image_size: the input side in pixels.
        vision_width: the vision transformer's width.
        vision_layers: its depth.
        patch_size: its patch side.
        text_width: the text transformer's width.
        text_layers: its depth.
        heads: attention heads of both towers (the vision head width is vision_width // heads).

    Returns:
        ``(model, eval transform, tokenizer)``.
    """
    model = open_clip.model.CLIP(
        embed_dim=embed_dim,
        vision_cfg=open_clip.model.CLIPVisionCfg(image_size=image_size, layers=vision_layers, width=vision_width,
                                                 patch_size=patch_size, head_width=vision_width // heads),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=text_width,
                                             heads=heads, layers=text_layers))
    preprocess = open_clip.transform.image_transform(image_size, is_train=False)
    return model, preprocess, open_clip.tokenizer.SimpleTokenizer()


def resolve_clip_weights(cfg: dict) -> Path:
    """The CLIP checkpoint: explicit ``clip.checkpoint`` → local caches (ours, Hugging Face's) →
    official download.

    Args:
        cfg: a ``conf/clip/*.yaml`` entry.

    Returns:
        The path of an existing file.

    Raises:
        WeightsNotFoundError: none found or downloadable; the message says how to get it.
    """
    arch, tag = cfg["arch"], cfg["pretrained"]
    what = f"CLIP {arch} ({tag})"
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    url = pretrained_cfg.get("url") or None
    file_name = os.path.basename(url) if url else f"{arch}-{tag}.bin"
    if cfg.get("checkpoint"):
        path = Path(cfg["checkpoint"]).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"{what} checkpoint {path} (clip.checkpoint) does not exist; "
                                   + how_to_provide(what, file_name, url, "clip.checkpoint"))
    for directory in search_dirs():
        if (directory / file_name).is_file():
            return directory / file_name
    hf_repo = pretrained_cfg.get("hf_hub", "").rstrip("/")
    if hf_repo:
        from huggingface_hub import try_to_load_from_cache
        for hf_file in _HF_FILES:
            cached = try_to_load_from_cache(hf_repo, hf_file)
            if isinstance(cached, str):
                return Path(cached)
    if is_offline():
        raise WeightsNotFoundError(f"{what} weights {file_name} not found locally and offline mode is set; "
                                   + how_to_provide(what, file_name, url, "clip.checkpoint"))
    try:
        return Path(open_clip.pretrained.download_pretrained(pretrained_cfg, cache_dir=str(cache_dir())))
    except Exception as err:  # noqa: BLE001 - hub and URL clients raise many unrelated types
        raise WeightsNotFoundError(f"{what} weights {file_name} not found locally and the download failed ({err}); "
                                   + how_to_provide(what, file_name, url, "clip.checkpoint")) from err


@ENGINES.register("open_clip")
def build_open_clip_engine(cfg: dict, weights: str, cache: object = None) -> ClipEngine:
    """Build the open_clip model of a ``conf/clip/*.yaml`` entry (``arch``: any open_clip model name or
    ``tiny``; ``pretrained``: its tag) with ``weights`` 'pretrained' or 'random'.

    Args:
        cfg: the clip config group entry.
        weights: ``pretrained`` (resolved by :func:`resolve_clip_weights`, never random as a fallback)
            or ``random`` (seeded by ``random_seed``).
        cache: unused here (:func:`salip_bench.engines.clip.build_clip` attaches the embedding cache).
    """
    seed = int(cfg.get("random_seed", 0))
    if cfg["arch"] == "tiny":
        if weights != "random":
            raise ValueError("clip=tiny has no pretrained weights; use it with weights=random")
        torch.manual_seed(seed)
        model, preprocess, tokenizer = build_tiny_clip(**cfg["tiny"])
        return ClipEngine(model, preprocess, tokenizer,
                          {"engine": "open_clip", "model": "tiny", "weights": "random", "seed": seed})
    if weights == "random":
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(cfg["arch"], pretrained=None,
                                                                     force_quick_gelu=cfg.get("quick_gelu", False))
        return ClipEngine(model, preprocess, open_clip.get_tokenizer(cfg["arch"]),
                          {"engine": "open_clip", "model": cfg["arch"], "weights": "random", "seed": seed})
    path = resolve_clip_weights(cfg)
    with checkpoint_errors(path, "CLIP"):
        model, _, preprocess = open_clip.create_model_and_transforms(cfg["arch"], pretrained=str(path),
                                                                     force_quick_gelu=cfg.get("quick_gelu", False))
    log.info("CLIP %s loaded from %s", cfg["arch"], path)
    return ClipEngine(model, preprocess, open_clip.get_tokenizer(cfg["arch"]),
                      {"engine": "open_clip", "model": cfg["arch"], "pretrained": cfg["pretrained"],
                       "weights": "pretrained", "file": str(path), "sha256": file_sha256(path)})


def to_pil(image: np.ndarray) -> Image.Image:
    """An (H, W, 3) uint8 RGB array as a PIL image (copied only when not contiguous)."""
    return Image.fromarray(np.ascontiguousarray(image))
