"""What every engine shares: its identity, its work counters, its memos and their disk cache.

An engine subclasses :class:`BaseEngine`, names its counters in ``COUNTERS``, keeps its per-image
work in memos made by :meth:`BaseEngine.memo`, and adds one method per role it offers
(``engines/roles.py``). The builder (``engines/builder.py``) attaches the run's disk cache to every
memo and resets a reused engine; neither needs to know the family.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from salip_bench.engines.memo import DiskCodec, FeatureMemo, V
from salip_bench.storage.feature_cache import FeatureCache

# Config entries' keys that say where a file is, not what the model is: not part of its cache keys.
PATH_KEYS = ("checkpoint", "local_dir", "text_dir")


def autocast_dtype(device_type: str) -> str | None:
    """The dtype autocast runs this device's networks in right now (None: autocast is off)."""
    return str(torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None


def weights_id(identity: dict) -> dict:
    """What a set of weights is, for cache keys: its identity without the file's path (the same file
    elsewhere must still hit).

    Args:
        identity: an engine's weights identity (``file``, ``sha256``, ``seed``, ...).
    """
    return {k: v for k, v in identity.items() if k != "file"}


class BaseEngine(nn.Module):
    """An engine's common state.

    Args:
        identity: where its weights come from (:func:`~salip_bench.engines.weights.weights_identity`),
            reported in run summaries.
        config: the config entry it was built from; with the weights and the torch version, what its
            outputs depend on (its paths left out), so part of every cache key.

    Attributes:
        chosen_by: the config key that picked this engine (``model``, ``model@refiner_model``,
            ``clip``), named when a stage refuses it (set by the builder).
    """

    COUNTERS: tuple[str, ...] = ("encoder_passes",)

    def __init__(self, identity: dict, config: dict | None = None) -> None:
        super().__init__()
        self.identity = identity
        self.model_id = {"weights": weights_id(identity),
                         "config": {k: v for k, v in (config or {}).items() if k not in PATH_KEYS},
                         "torch": torch.__version__}
        self.chosen_by = "model"
        self._memos: list[FeatureMemo] = []
        self.zero_counters()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def memo(self, size: int, codec: DiskCodec[V] | None = None,
             weigh: Callable[[V], int] | None = None) -> FeatureMemo[V]:
        """A new :class:`~salip_bench.engines.memo.FeatureMemo` of this engine, cleared by :meth:`reset`
        and attached to the disk cache by :meth:`use_cache`."""
        memo = FeatureMemo(size, codec, weigh)
        self._memos.append(memo)
        return memo

    def cache_key(self, *parts: object) -> str:
        """Key of a value this model computes from ``parts``. The device and the autocast dtype in
        effect are part of it because their numerics differ, and a run must give the same result with
        or without the cache."""
        device = self.device.type
        return FeatureCache.key(self.model_id, device, autocast_dtype(device), *parts)

    def use_cache(self, cache: FeatureCache | None) -> None:
        """Read and write this engine's features in ``cache`` from now on (None: memory only)."""
        for memo in self._memos:
            memo.disk = cache

    def zero_counters(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)

    def counters(self) -> dict[str, int]:
        """Work done since built or reset, e.g. ``{"encoder_passes": n}``."""
        return {name: getattr(self, name) for name in self.COUNTERS}

    def reset(self) -> None:
        """Back to the just-built state (no counts, nothing memoised; the disk cache keeps its own),
        for reuse by a multirun's next job."""
        self.zero_counters()
        for memo in self._memos:
            memo.clear()
