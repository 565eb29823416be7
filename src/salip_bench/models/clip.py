"""CLIP-family embedders, built by the engine a ``conf/clip/*.yaml`` names (``engine:``).

The engines live in :mod:`salip_bench.engines`; this module keeps the historical import path.
"""
from __future__ import annotations

from salip_bench.engines.clip_engine import ClipEngine, build_tiny_clip, resolve_clip_weights, to_pil
from salip_bench.models.shared import shared_engine
from salip_bench.registry import ENGINES

__all__ = ["ClipEngine", "build_clip", "build_tiny_clip", "resolve_clip_weights", "to_pil"]


def build_clip(cfg: dict, weights: str, reuse: bool = False) -> ClipEngine:
    """Build the embedder described by a ``conf/clip/*.yaml`` entry with ``weights`` 'pretrained' or 'random'.

    Args:
        cfg: the clip group entry; its ``engine`` key names the registered engine (default ``open_clip``).
        weights: ``pretrained`` or ``random``.
        reuse: take the engine this process built last from the same ``cfg`` and ``weights`` (the
            previous job of a multirun) instead of loading it again.
    """
    if reuse:
        return shared_engine("clip", [cfg, weights], lambda: build_clip(cfg, weights))
    return ENGINES.get(cfg.get("engine", "open_clip"))(cfg, weights, None)
