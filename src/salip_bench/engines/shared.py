"""Engines reused by the jobs of one process, so a Hydra multirun loads ViT-H and CLIP once.

One engine is held per kind (``sam``, ``clip``): a job asking for another configuration replaces
it, so two large models of a kind never sit in memory together.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol, TypeVar


class Resettable(Protocol):
    def reset(self) -> None: ...


E = TypeVar("E", bound=Resettable)
_held: dict[str, tuple[str, Resettable]] = {}


def shared_engine(kind: str, config: object, build: Callable[[], E]) -> E:
    """The ``kind`` engine built last in this process if it came from the same ``config``
    (JSON-serialisable: model config and weights), reset to its just-built state; else ``build()``."""
    key = json.dumps(config, sort_keys=True, default=str)
    held = _held.get(kind)
    if held is not None and held[0] == key:
        held[1].reset()
        return held[1]  # type: ignore[return-value]
    _held.pop(kind, None)  # let the old engine go before the new one is built
    engine = build()
    _held[kind] = (key, engine)
    return engine


def release_engines() -> None:
    """Forget every held engine (frees their memory once nothing else refers to them)."""
    _held.clear()
