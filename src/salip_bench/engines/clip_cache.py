"""CLIP embeddings of visual prompts (and of the class sentences), remembered so that a trial or job
that needs one again encodes nothing.

A filter, top-k or refiner sweep and every tuning trial retrieve among candidates CLIP has already
embedded for the same image, and on CPU a released CLIP costs more per picture than SAM does. An embedding
depends on the CLIP (weights, architecture, device, autocast dtype), on how a candidate becomes a
picture (the retriever's kind and its parameters), and on the image and the candidate's mask and
box: those are its key. Kept in memory for the run (the jobs of a multirun reset it), and on disk
through the :class:`~salip_bench.storage.feature_cache.FeatureCache` (kind ``clip``, one file per CLIP,
prompt and image, holding every candidate embedded so far), under its size bound and ``cache.*``
switches. Embeddings are those a fresh encoding gives: CLIP embeds each picture independently of
the others in its batch (tests/test_cache.py checks hits against fresh encodings).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from salip_bench.storage.content_keys import image_key
from salip_bench.storage.feature_cache import FeatureCache

if TYPE_CHECKING:
    from salip_bench.engines.clip import ClipEngine

VERSION = 1  # part of every key: bump when what a visual prompt's embedding means changes


def candidate_key(mask: np.ndarray, box: np.ndarray) -> str:
    """Content key of one candidate as a retriever sees it: its mask's bits and its box."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{mask.shape}".encode())
    digest.update(np.ascontiguousarray(mask, dtype=bool).data)
    digest.update(np.asarray(box, np.float32).tobytes())
    return digest.hexdigest()


class ClipEmbeddingCache:
    """Visual-prompt embeddings by (CLIP, prompt, image) and candidate, in memory and optionally on disk.

    memo_size: embeddings kept in memory (least recently used image groups go first); disk: the
    feature cache, or None; ``hits`` / ``encoded`` count embeddings served and computed.
    """

    def __init__(self, memo_size: int = 20_000, disk: FeatureCache | None = None) -> None:
        self.memo_size = memo_size
        self.disk = disk
        self._memo: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._texts: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.encoded = 0

    def clear(self) -> None:
        self._memo.clear()
        self._texts.clear()

    def texts(self, clip: ClipEngine, sentences: list[str]) -> torch.Tensor:
        """``clip.encode_texts(sentences)``, encoded once per run (memory only): every trial of a tuning
        builds a retriever whose class prototypes are the same sentences' embeddings."""
        key = json.dumps(sentences)
        if key not in self._texts:
            self._texts[key] = clip.encode_texts(list(sentences))
        return self._texts[key]

    def group_key(self, clip: ClipEngine, prompt: dict, image: np.ndarray) -> str:
        """Key of every embedding of ``image``'s candidates under this CLIP and visual prompt."""
        device = clip.device.type
        autocast = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
        return FeatureCache.key("clip-embeddings", VERSION, getattr(clip, "model_id", clip.identity), device,
                                autocast, prompt, image_key(image))

    def embed(self, clip: ClipEngine, prompt: dict, image: np.ndarray, masks: np.ndarray, boxes: np.ndarray,
              build: Callable[[int], np.ndarray], batch_size: int = 32, workers: int = 1) -> torch.Tensor:
        """(N, D) embeddings of the N candidates' visual prompts, encoding only those not seen before.

        Args:
            clip: the engine; prompt: the retriever's kind and parameters (JSON-serialisable);
            image: the RGB image; masks / boxes: (N, H, W) and (N, 4) candidates;
            build: candidate index -> its visual prompt; batch_size / workers: as ``encode_built``.
        """
        group = self.group_key(clip, prompt, image)
        entries = self._memo.pop(group, None)
        if entries is None:
            entries = self._load(group)
        keys = [candidate_key(mask, box) for mask, box in zip(masks, boxes)]
        missing, seen = [], set()  # first occurrences of the keys not embedded yet
        for i, key in enumerate(keys):
            if key not in entries and key not in seen:
                seen.add(key)
                missing.append(i)
        if missing:
            encoded = clip.encode_built(len(missing), lambda j: build(missing[j]), batch_size, workers)
            entries.update({keys[i]: row for i, row in zip(missing, encoded)})
            self._save(group, entries)
        self.encoded += len(missing)
        self.hits += len(keys) - len(missing)
        self._remember(group, entries)
        return torch.stack([entries[key] for key in keys]) if keys else torch.zeros(0, clip.embed_dim)

    def _remember(self, group: str, entries: dict[str, torch.Tensor]) -> None:
        self._memo[group] = entries
        while len(self._memo) > 1 and sum(len(e) for e in self._memo.values()) > self.memo_size:
            self._memo.popitem(last=False)

    def _load(self, group: str) -> dict[str, torch.Tensor]:
        stored = self.disk.load_clip_embeddings(group) if self.disk is not None and self.disk.clip else None
        if stored is None:
            return {}
        keys, embeddings = stored
        return dict(zip(keys, torch.from_numpy(embeddings)))

    def _save(self, group: str, entries: dict[str, torch.Tensor]) -> None:
        if self.disk is not None and self.disk.clip:
            self.disk.save_clip_embeddings(group, list(entries), torch.stack(list(entries.values())).numpy())
