"""SAM v1 models of any size from the upstream architecture classes, and their weights.

The upstream builders differ only in numbers but hard-code the input size and the prompt
embedding width; ours take them as arguments so a *tiny* SAM (same classes, small encoder and
input) exists for tests. The engine around a model (its embedding memo, caches and counters) is
``engines/sam_engine.py``; MedSAM (``engines/medsam_engine.py``) builds the same architecture.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from salip_bench.engines.weights import WeightsSource, load_state_dict, pretrained_or_random, resolve_weights

ARCH_KEYS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes", "image_size",
             "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads")
log = logging.getLogger(__name__)


def build_sam_model(encoder_embed_dim: int, encoder_depth: int, encoder_num_heads: int,
                    encoder_global_attn_indexes: list[int], image_size: int = 1024,
                    prompt_embed_dim: int = 256, decoder_depth: int = 2, decoder_mlp_dim: int = 2048,
                    decoder_num_heads: int = 8) -> Sam:
    """Build an (untrained) SAM with the upstream architecture.

    Args:
        encoder_embed_dim: width of the ViT image encoder.
        encoder_depth: its number of blocks.
        encoder_num_heads: its attention heads.
        encoder_global_attn_indexes: the blocks with global (not windowed) attention.
        image_size: the encoder's square input side (1024 for the released models).
        prompt_embed_dim: channels of the image embedding and prompt tokens.
        decoder_depth: blocks of the mask decoder's two-way transformer.
        decoder_mlp_dim: width of its MLPs.
        decoder_num_heads: its attention heads.
    """
    patch_size = 16
    embedding_side = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth, embed_dim=encoder_embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=encoder_num_heads,
            patch_size=patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=list(encoder_global_attn_indexes), window_size=14,
            out_chans=prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim, image_embedding_size=(embedding_side, embedding_side),
            input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_embed_dim,
                                          mlp_dim=decoder_mlp_dim, num_heads=decoder_num_heads),
            transformer_dim=prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_embed_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def sam_weights_source(cfg: dict, key: str, what: str = "SAM", advice: str | None = None) -> WeightsSource:
    """Where a ``conf/model/sam_*.yaml`` or ``medsam_*.yaml`` entry's checkpoint may be.

    Args:
        cfg: the entry (``name``, ``checkpoint_file``, ``url``, ``checkpoint``).
        key: the config key that picked it (``model``, ``refiner_model``).
        what: the family, as messages name it.
        advice: how to get the file beyond its URL (default: the smoke-run hint).
    """
    extra = {"advice": advice} if advice is not None else {}
    return WeightsSource(f"{what} {cfg['name']}", cfg["checkpoint_file"], f"{key}.checkpoint", cfg.get("checkpoint"),
                         cfg.get("url"), **extra)


def load_sam(cfg: dict, weights: str, key: str, what: str = "SAM",
             advice: str | None = None) -> tuple[Sam, Path | None]:
    """The SAM-architecture model of an entry with its weights, and its checkpoint (None: random).

    Args:
        cfg: the entry (architecture numbers, ``name``, checkpoint keys, ``random_seed``).
        weights: ``pretrained`` (resolved: explicit path, local caches, official download) or
            ``random`` (seeded by ``random_seed``).
        key: the config key that picked it.
        what: the family, as messages name it.
        advice: how to get the file beyond its URL.
    """
    path = pretrained_or_random(cfg, weights, lambda: resolve_weights(sam_weights_source(cfg, key, what, advice)))
    sam = build_sam_model(**{k: cfg[k] for k in ARCH_KEYS})
    if path is not None:
        sam.load_state_dict(load_state_dict(path, what))
        log.info("%s %s loaded from %s", what, cfg["name"], path)
    return sam, path
