"""CLIP-family embedders, built by the engine a ``conf/clip/*.yaml`` names (``engine:``).

The engines live in :mod:`salip_bench.engines`; this module keeps the historical import path.
"""
from __future__ import annotations

import torch

from salip_bench.engines.clip_engine import ClipEngine, build_tiny_clip, resolve_clip_weights, to_pil
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.engines.shared import shared_engine
from salip_bench.registry import ENGINES

__all__ = ["ClipEngine", "build_clip", "build_tiny_clip", "resolve_clip_weights", "to_pil"]


def build_clip(cfg: dict, weights: str, reuse: bool = False, cache: FeatureCache | None = None) -> ClipEngine:
    """Build the embedder described by a ``conf/clip/*.yaml`` entry with ``weights`` 'pretrained' or 'random'.

    Args:
        cfg: the clip group entry; its ``engine`` key names the registered engine (default ``open_clip``).
        weights: ``pretrained`` or ``random``.
        reuse: take the engine this process built last from the same ``cfg`` and ``weights`` (the
            previous job of a multirun) instead of loading it again.
        cache: disk cache of its visual-prompt embeddings (None: memory only).
    """
    engine = (shared_engine("clip", [cfg, weights], lambda: _build_clip(cfg, weights)) if reuse
              else _build_clip(cfg, weights))
    engine.use_cache(cache)
    return engine


def _build_clip(cfg: dict, weights: str) -> ClipEngine:
    engine = ENGINES.get(cfg.get("engine", "open_clip"))(cfg, weights, None)
    # The config's architecture numbers (the tiny CLIP's widths) and the torch version, besides the weights.
    engine.model_id = {**engine.model_id, "config": {k: v for k, v in cfg.items() if k != "checkpoint"},
                       "torch": torch.__version__}
    return engine
