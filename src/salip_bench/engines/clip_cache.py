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
from collections.abc import Callable

import numpy as np
import torch

from salip_bench.engines.memo import DiskCodec, FeatureMemo
from salip_bench.engines.roles import ImageTextEmbedder
from salip_bench.storage.content_keys import image_key
from salip_bench.storage.feature_cache import FeatureCache

VERSION = 1  # part of every key: bump when what a visual prompt's embedding means changes
Group = dict[str, torch.Tensor]  # candidate key -> its embedding, for one (CLIP, prompt, image)


def candidate_key(mask: np.ndarray, box: np.ndarray) -> str:
    """Content key of one candidate as a retriever sees it: its mask's bits and its box."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{mask.shape}".encode())
    digest.update(np.ascontiguousarray(mask, dtype=bool).data)
    digest.update(np.asarray(box, np.float32).tobytes())
    return digest.hexdigest()


def load_group(cache: FeatureCache, key: str) -> Group | None:
    stored = cache.load_clip_embeddings(key)
    if stored is None:
        return None
    keys, embeddings = stored
    return dict(zip(keys, torch.from_numpy(embeddings)))


def save_group(cache: FeatureCache, key: str, group: Group) -> None:
    cache.save_clip_embeddings(key, list(group), torch.stack(list(group.values())).numpy())


class ClipEmbeddingCache:
    """Visual-prompt embeddings by (CLIP, prompt, image) group and candidate, in the engine's memo
    (bounded by the embeddings it holds) and on disk; ``hits`` / ``encoded`` count embeddings
    served and computed.

    Args:
        groups: the engine's memo, made with :attr:`MEMO` (codec and weight).
    """

    MEMO = (DiskCodec("clip", load_group, save_group), len)

    def __init__(self, groups: FeatureMemo[Group]) -> None:
        self.groups = groups
        self._texts: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.encoded = 0

    def clear(self) -> None:
        self.groups.clear()
        self._texts.clear()

    def texts(self, clip: ImageTextEmbedder, sentences: list[str]) -> torch.Tensor:
        """``clip.encode_texts(sentences)``, encoded once per run (memory only): every trial of a tuning
        builds a retriever whose class prototypes are the same sentences' embeddings."""
        key = json.dumps(sentences)
        if key not in self._texts:
            self._texts[key] = clip.encode_texts(list(sentences))
        return self._texts[key]

    @staticmethod
    def group_key(clip: ImageTextEmbedder, prompt: dict, image: np.ndarray) -> str:
        """Key of every embedding of ``image``'s candidates under this CLIP and visual prompt."""
        return clip.cache_key("clip-embeddings", VERSION, prompt, image_key(image))

    def embed(self, clip: ImageTextEmbedder, prompt: dict, image: np.ndarray, masks: np.ndarray, boxes: np.ndarray,
              build: Callable[[int], np.ndarray], batch_size: int = 32, workers: int = 1) -> torch.Tensor:
        """(N, D) embeddings of the N candidates' visual prompts, encoding only those not seen before.

        Args:
            clip: the engine; prompt: the retriever's kind and parameters (JSON-serialisable);
            image: the RGB image; masks / boxes: (N, H, W) and (N, 4) candidates;
            build: candidate index -> its visual prompt; batch_size / workers: as ``encode_built``.
        """
        key = self.group_key(clip, prompt, image)
        group = self.groups.get(key) or {}
        keys = [candidate_key(mask, box) for mask, box in zip(masks, boxes)]
        missing, seen = [], set()  # first occurrences of the keys not embedded yet
        for i, candidate in enumerate(keys):
            if candidate not in group and candidate not in seen:
                seen.add(candidate)
                missing.append(i)
        if missing:
            encoded = clip.encode_built(len(missing), lambda j: build(missing[j]), batch_size, workers)
            group.update({keys[i]: row for i, row in zip(missing, encoded)})
            self.groups.put(key, group)
        self.encoded += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([group[k] for k in keys]) if keys else torch.zeros(0, clip.embed_dim)
