"""SAM models of any size from the upstream architecture classes, and a predictor that encodes
each image once.

The upstream builders differ only in numbers but hard-code the input size and the prompt
embedding width; ours take them as arguments so a *tiny* SAM (same classes, small encoder and
input) exists for tests. ``SamEngine`` owns the model, counts image-encoder passes with a forward
hook and memoises image embeddings by image content (in memory, and on disk when given a
:class:`~salip_bench.storage.feature_cache.FeatureCache`), so the refiner's ``set_image`` on the image
the generator already encoded costs nothing, nor does a later run on the same image and model.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from salip_bench.storage.content_keys import image_key
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.engines.shared import shared_engine
from salip_bench.engines.weights import file_sha256, load_state_dict, resolve_checkpoint

ARCH_KEYS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes", "image_size",
             "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads")
log = logging.getLogger(__name__)


def build_sam_model(encoder_embed_dim: int, encoder_depth: int, encoder_num_heads: int,
                    encoder_global_attn_indexes: list[int], image_size: int = 1024,
                    prompt_embed_dim: int = 256, decoder_depth: int = 2, decoder_mlp_dim: int = 2048,
                    decoder_num_heads: int = 8) -> Sam:
    """Build an (untrained) SAM with the upstream architecture.

    encoder_*: ViT image encoder width, depth, heads and global-attention block indices;
    image_size: the encoder's square input side (1024 for the released models); prompt_embed_dim:
    channels of the image embedding and prompt tokens; decoder_*: the two-way transformer.
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


def autocast_dtype(device_type: str) -> str | None:
    """The dtype autocast runs this device's networks in right now (None: autocast is off)."""
    return str(torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None


def _outputs_as_float32(module: nn.Module, inputs: tuple, output: object) -> object:
    """Forward hook: floating-point tensors in a network's output as float32 (a no-op without autocast)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple):
        return tuple(_outputs_as_float32(module, inputs, o) for o in output)
    return output


class MemoSamPredictor(SamPredictor):
    """``SamPredictor`` whose ``set_image`` reuses an image's embedding: from memory if it saw the
    image recently, else from the disk cache, else it runs the encoder and stores the result in both.

    Upstream's predictor re-runs the image encoder on every ``set_image``; the SaLIP refiner calls
    it on the very image the generator just encoded, which would double the dominant cost.
    memo_size: embeddings kept in memory; cache: disk layer (None: memory only); model_id: what
    the model's outputs depend on (weights, architecture), part of every disk key.
    """

    def __init__(self, sam_model: Sam, memo_size: int = 8, cache: FeatureCache | None = None,
                 model_id: dict | None = None) -> None:
        super().__init__(sam_model)
        self.memo_size = memo_size
        self.cache = cache
        self.model_id = model_id or {}
        self._memo: OrderedDict[str, tuple] = OrderedDict()

    def cache_key(self, *parts: object) -> str:
        """Disk key of a value this model computes from ``parts``. The device and the autocast dtype in
        effect are part of it because their numerics differ, and a run must give the same result with
        or without the cache."""
        return FeatureCache.key(self.model_id, self.device.type, autocast_dtype(self.device.type), *parts)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = image_key(image) + image_format
        if key not in self._memo:
            self._memo[key] = self._stored_or_encoded(image, image_format, key)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        self.features, self.original_size, self.input_size = self._memo[key]
        self.is_image_set = True

    def _stored_or_encoded(self, image: np.ndarray, image_format: str, key: str) -> tuple:
        disk_key = self.cache_key("embedding", key) if self.cache is not None and self.cache.embeddings else None
        stored = self.cache.load_embedding(disk_key) if disk_key else None
        if stored is not None:
            return (stored["features"].to(self.device), tuple(stored["original_size"].tolist()),
                    tuple(stored["input_size"].tolist()))
        super().set_image(image, image_format)
        if disk_key:
            self.cache.save_embedding(disk_key, {"features": self.features,
                                                 "original_size": torch.tensor(self.original_size),
                                                 "input_size": torch.tensor(self.input_size)})
        return self.features, self.original_size, self.input_size

    def forget(self) -> None:
        self._memo.clear()
        self.reset_image()


class SamEngine(nn.Module):
    """A SAM model, its memoising predictor, and a count of image-encoder passes (cache hits cost none).

    sam: the model; identity: where its weights come from (reported in run summaries); arch: its
    architecture numbers (with the weights, what cached embeddings and proposals depend on);
    cache: the disk cache of embeddings and proposals, or None.
    """

    def __init__(self, sam: Sam, identity: dict, arch: dict | None = None, cache: FeatureCache | None = None) -> None:
        super().__init__()
        self.sam = sam.eval()
        self.identity = identity
        self.encoder_passes = 0
        # The checkpoint's path is no part of the weights' identity: the same file elsewhere hits.
        model_id = {"weights": {k: v for k, v in identity.items() if k != "file"}, "arch": arch,
                    "torch": torch.__version__}
        self.predictor = MemoSamPredictor(self.sam, model_id=model_id)
        self.use_cache(cache)
        self.sam.image_encoder.register_forward_hook(self._count_pass)
        # Under autocast (trainer.precision=bf16-mixed) the networks run in bf16, but what they hand
        # on is float32: upscaling logits and thresholding them at 0 stay as precise as without it,
        # and upstream's numpy conversions (which reject bf16) keep working.
        for network in (self.sam.image_encoder, self.sam.mask_decoder):
            network.register_forward_hook(_outputs_as_float32)

    def _count_pass(self, *_: object) -> None:
        self.encoder_passes += 1

    def use_cache(self, cache: FeatureCache | None) -> None:
        self.cache = cache
        self.predictor.cache = cache

    def reset(self) -> None:
        """Back to the just-built state (no memoised embedding, no passes), for reuse by another run."""
        self.encoder_passes = 0
        self.predictor.forget()


def build_sam(cfg: dict, weights: str, cache: FeatureCache | None = None, reuse: bool = False,
              engine_class: type[SamEngine] = SamEngine) -> SamEngine:
    """Build the SAM described by a ``conf/model/*.yaml`` entry with ``weights`` 'pretrained' or 'random'.

    cache: disk cache of embeddings and proposals (None: none); reuse: take the engine this process
    built last from the same ``cfg`` and ``weights`` (the previous job of a multirun) instead of
    loading it again; engine_class: ``SamEngine`` or a subclass (``engines/sam.py`` adds the roles).
    """
    engine = (shared_engine("sam", [cfg, weights], lambda: _build_sam(cfg, weights, engine_class)) if reuse
              else _build_sam(cfg, weights, engine_class))
    engine.use_cache(cache)
    return engine


def _build_sam(cfg: dict, weights: str, engine_class: type[SamEngine] = SamEngine) -> SamEngine:
    arch = {k: cfg[k] for k in ARCH_KEYS}
    if weights == "random":
        torch.manual_seed(int(cfg.get("random_seed", 0)))
        sam = build_sam_model(**arch)
        return engine_class(sam, {"model": cfg["name"], "weights": "random", "seed": int(cfg.get("random_seed", 0))},
                            arch)
    if weights != "pretrained":
        raise ValueError(f"weights must be 'pretrained' or 'random', got {weights!r}")
    path = resolve_checkpoint(f"SAM {cfg['name']}", cfg["checkpoint_file"], cfg.get("url"), cfg.get("checkpoint"),
                              "model.checkpoint")
    sam = build_sam_model(**arch)
    sam.load_state_dict(load_state_dict(path))
    log.info("SAM %s loaded from %s", cfg["name"], path)
    return engine_class(sam, {"model": cfg["name"], "weights": "pretrained", "file": str(path),
                              "sha256": file_sha256(path)}, arch)
