"""The one way an engine is built: a ``conf/model/*.yaml`` or ``conf/clip/*.yaml`` entry → its
registered engine (``engine:``) → reused across the jobs of one process → the run's disk cache attached.

A Hydra multirun loads ViT-H and CLIP once: the engine a slot (the config key that picks it) built
last is taken again, reset to its just-built state, when the next job asks for the same entry and
weights. One engine is held per slot, so two large models of a slot never sit in memory together.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.weights import WeightsNotFoundError
from salip_bench.registry import ENGINES
from salip_bench.storage.feature_cache import FeatureCache

_held: dict[str, tuple[str, BaseEngine]] = {}


def build_engine(cfg: dict, weights: str, key: str = "model", cache: FeatureCache | None = None,
                 reuse: bool = False) -> BaseEngine:
    """The engine of a config entry.

    Args:
        cfg: the entry; its ``engine`` names the registered engine.
        weights: ``pretrained`` or ``random``.
        key: the config key that picked the entry (``model``, ``refiner_model``, ``clip``): named in
            messages (``model@refiner_model=``, ``refiner_model.checkpoint``) and the reuse slot.
        cache: the disk cache of its features (None: memory only).
        reuse: take the engine this process built last for ``key`` from the same entry and weights
            (the previous job of a multirun) instead of loading it again.
    """
    def build() -> BaseEngine:
        try:
            engine = ENGINES.get(cfg["engine"])(cfg, weights, key)
        except WeightsNotFoundError as err:
            if key in ("model", "clip"):
                raise
            raise WeightsNotFoundError(f"model@{key}={cfg['name']}: {err}") from None
        engine.chosen_by = key if key in ("model", "clip") else f"model@{key}"
        return engine

    engine = _shared(key, [cfg, weights], build) if reuse else build()
    engine.use_cache(cache)
    return engine


def _shared(slot: str, config: object, build: Callable[[], BaseEngine]) -> BaseEngine:
    signature = json.dumps(config, sort_keys=True, default=str)
    held = _held.get(slot)
    if held is not None and held[0] == signature:
        held[1].reset()
        return held[1]
    _held.pop(slot, None)  # let the old engine go before the new one is built
    engine = build()
    _held[slot] = (signature, engine)
    return engine


def held_engines() -> dict[str, BaseEngine]:
    """The engines kept for reuse, by slot."""
    return {slot: engine for slot, (_, engine) in _held.items()}


def release_engines() -> None:
    """Forget every held engine (frees their memory once nothing else refers to them)."""
    _held.clear()
