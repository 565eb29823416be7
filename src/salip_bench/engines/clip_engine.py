"""Engine ``open_clip``: any open_clip model name + pretrained tag, and a tiny one.

``ClipEngine`` owns the model, its eval transform and tokenizer, returns L2-normalised
embeddings and counts the images and texts it encodes (the run summary reports them). It is the
image/text embedding role (:class:`~salip_bench.engines.roles.ImageTextEmbedder`); the
``biomedclip`` engine (``engines/biomedclip_engine.py``) builds the same class around BiomedCLIP.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.clip_cache import ClipEmbeddingCache
from salip_bench.engines.weights import (
    WeightsSource,
    checkpoint_errors,
    pretrained_or_random,
    resolve_weights,
    weights_identity,
)
from salip_bench.registry import ENGINES

log = logging.getLogger(__name__)
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # an open_clip hub repo's weights
# CPU kernels embed pictures in groups of 4: a picture in a batch's incomplete last group gets other
# rounding (last bits) than in a full group, so an embedding would depend on how many pictures were
# batched with it. In forwards of any multiple of 4 pictures every picture's embedding is the same
# bit for bit, wherever it sits (tests/test_clip_cache.py).
PICTURE_GROUP = 4


class ClipEngine(BaseEngine):
    """A CLIP model with its preprocessing; ``encode_*`` return L2-normalised float32 embeddings.

    Args:
        model: the open_clip model.
        preprocess: its eval transform.
        tokenizer: its tokenizer.
        identity: where its weights come from.
        config: its config entry (with the weights, what its embeddings depend on).
    """

    COUNTERS = ("images_encoded", "texts_encoded")

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, identity: dict,
                 config: dict | None = None) -> None:
        super().__init__(identity, config)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.embedding_cache = ClipEmbeddingCache(self.memo(20_000, *ClipEmbeddingCache.MEMO))

    def reset(self) -> None:
        """Zero the work counters and forget the remembered embeddings (the disk cache keeps them), as
        when just built, for reuse by another run."""
        super().reset()
        if self.embedding_cache is not None:
            self.embedding_cache.clear()

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


def clip_weights_source(cfg: dict, key: str) -> WeightsSource:
    """Where an open_clip entry's weights may be: explicit ``clip.checkpoint`` → our caches → the
    Hugging Face cache of open_clip's hub mirror → the official URL (OpenAI's carry their SHA-256)
    or the hub.

    Args:
        cfg: a ``conf/clip/*.yaml`` entry (``arch``, ``pretrained`` tag, ``checkpoint``).
        key: the config key that picked it.
    """
    arch, tag = cfg["arch"], cfg["pretrained"]
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    url = pretrained_cfg.get("url") or None
    sha256 = url.split("/")[-2] if url and "openaipublic" in url else None  # open_clip checks the same
    return WeightsSource(f"CLIP {arch} ({tag})", os.path.basename(url) if url else f"{arch}-{tag}.bin",
                         f"{key}.checkpoint", cfg.get("checkpoint"), url, sha256,
                         pretrained_cfg.get("hf_hub", "").rstrip("/") or None, HF_FILES)


@ENGINES.register("open_clip")
def build_open_clip_engine(cfg: dict, weights: str, key: str = "clip") -> ClipEngine:
    """Build the open_clip model of a ``conf/clip/*.yaml`` entry (``arch``: any open_clip model name or
    ``tiny``; ``pretrained``: its tag) with ``weights`` 'pretrained' or 'random' (build it with
    :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the clip config group entry.
        weights: ``pretrained`` (never random as a fallback) or ``random`` (seeded by ``random_seed``).
        key: the config key that picked it, named in messages.
    """
    tiny = cfg["arch"] == "tiny"
    path = pretrained_or_random(cfg, weights, None if tiny else lambda: resolve_weights(clip_weights_source(cfg, key)))
    seed = int(cfg.get("random_seed", 0))
    if tiny:
        model, preprocess, tokenizer = build_tiny_clip(**cfg["tiny"])
        return ClipEngine(model, preprocess, tokenizer, weights_identity("open_clip", "tiny", None, seed), cfg)
    with checkpoint_errors(path, "CLIP") if path is not None else contextlib.nullcontext():
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg["arch"], pretrained=None if path is None else str(path), force_quick_gelu=cfg.get("quick_gelu", False))
    extra = {} if path is None else {"pretrained": cfg["pretrained"]}
    if path is not None:
        log.info("CLIP %s loaded from %s", cfg["arch"], path)
    return ClipEngine(model, preprocess, open_clip.get_tokenizer(cfg["arch"]),
                      weights_identity("open_clip", cfg["arch"], path, seed, **extra), cfg)


def to_pil(image: np.ndarray) -> Image.Image:
    """An (H, W, 3) uint8 RGB array as a PIL image (copied only when not contiguous)."""
    return Image.fromarray(np.ascontiguousarray(image))
