"""The one memo of what an engine computes per image: least recently used out, keyed by content,
backed by the run's disk :class:`~salip_bench.storage.feature_cache.FeatureCache` when one is attached.

Every engine keeps its per-image work here (SAM's and MedSAM's embeddings, SAM 2's feature maps,
SAM 3's backbone state, CLIP's visual-prompt embeddings, SAM's proposals, tuning's box masks), so
a memo's bound, its eviction order and its disk layer behave the same everywhere. Keys are content
keys (:mod:`salip_bench.storage.content_keys`) folded into the engine's ``cache_key``, which
carries the model, device and autocast dtype: what is served is what a fresh computation gives.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from salip_bench.storage.feature_cache import FeatureCache

V = TypeVar("V")


@dataclass(frozen=True)
class DiskCodec(Generic[V]):
    """How a memo's values go to and come from the disk cache.

    Args:
        switch: the :class:`FeatureCache` attribute that turns this kind on (``embeddings``,
            ``proposals``, ``clip``).
        load: (cache, key) -> the stored value, or None.
        save: (cache, key, value) -> None.
    """

    switch: str
    load: Callable[[FeatureCache, str], V | None]
    save: Callable[[FeatureCache, str, V], None]


class FeatureMemo(Generic[V]):
    """Values by key, at most ``size`` in memory (by count, or by ``weigh`` of each value), least
    recently used out; read from and written to ``disk`` when a cache and a codec are set.

    Args:
        size: the memory bound (0: nothing kept in memory, the disk layer only).
        codec: how values are stored on disk, or None (memory only).
        weigh: a value's share of ``size`` (default 1 each); the newest value is kept even when it
            alone exceeds the bound.
    """

    def __init__(self, size: int, codec: DiskCodec[V] | None = None, weigh: Callable[[V], int] | None = None) -> None:
        self.size = size
        self.codec = codec
        self.weigh = weigh
        self.disk: FeatureCache | None = None
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._weights: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def _on_disk(self) -> FeatureCache | None:
        if self.codec is None or self.disk is None or not getattr(self.disk, self.codec.switch):
            return None
        return self.disk

    def has_room(self) -> bool:
        """Whether one more value (of a count bound) would let nothing held go."""
        return self.weigh is None and len(self._items) < self.size

    def get(self, key: Hashable, remember: bool = True) -> V | None:
        """The value under ``key``: from memory, else from disk (then remembered unless not
        ``remember``), else None."""
        if key in self._items:
            if remember:
                self._items.move_to_end(key)
            return self._items[key]
        disk = self._on_disk()
        value = self.codec.load(disk, key) if disk is not None else None
        if value is not None and remember:
            self._remember(key, value)
        return value

    def put(self, key: Hashable, value: V, remember: bool = True) -> None:
        """Keep ``value`` under ``key`` on disk and, if ``remember``, in memory."""
        disk = self._on_disk()
        if disk is not None:
            self.codec.save(disk, key, value)
        if remember:
            self._remember(key, value)

    def fetch(self, key: Hashable, compute: Callable[[], V], remember: bool = True) -> V:
        """The value under ``key``, else ``compute()`` (kept). With a count bound, the least recently
        used value is let go before computing, so the bound holds at the peak too.

        Args:
            key: the value's content key.
            compute: makes the value when neither memory nor disk holds it.
            remember: keep a computed value in memory (False: on disk only, and nothing held is let
                go: for values used once, such as a propagation's frames, that would push out values
                still needed).
        """
        value = self.get(key, remember)
        if value is None:
            if remember and self.weigh is None and self.size > 0:
                self._evict(self.size - 1, keep_newest=False)
            value = compute()
            self.put(key, value, remember)
        return value

    @contextmanager
    def widened(self, extra: int) -> Iterator[None]:
        """Hold ``extra`` more values in memory for the block's duration (then back to the bound,
        least recently used out).

        Args:
            extra: how many more values (or weight) may be held.
        """
        self.size += extra
        try:
            yield
        finally:
            self.size -= extra
            self._evict(self.size, keep_newest=self.size > 0)

    def clear(self) -> None:
        """Drop everything held in memory (the disk cache keeps its own)."""
        self._items.clear()
        self._weights.clear()

    def _remember(self, key: Hashable, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        self._weights[key] = self.weigh(value) if self.weigh is not None else 1
        self._evict(self.size, keep_newest=self.size > 0)

    def _evict(self, bound: int, keep_newest: bool) -> None:
        while self._items and sum(self._weights.values()) > bound and not (keep_newest and len(self._items) == 1):
            key, _ = self._items.popitem(last=False)
            del self._weights[key]
