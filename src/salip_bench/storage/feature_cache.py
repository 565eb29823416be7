"""A bounded on-disk cache of the models' deterministic, expensive outputs: SAM's image embeddings,
the generator's proposals and CLIP's embeddings of visual prompts.

An ablation that changes only later stages (retriever, filter, refiner) then costs no SAM
encoder or decoder pass in any later run or job on the same images. Keys are content hashes of
everything the value depends on (image bytes, model identity, settings), never file names, so a
changed image, checkpoint, seed or setting simply misses. Values are tensors (``torch.save``,
read back with ``weights_only=True``) or plain arrays (``.npz`` without pickles); each file is
written to a temporary name and renamed, so concurrent jobs never read half a file. The cache is
an optimisation only: a file that cannot be read is a miss and a failed write is a warning.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from salip_bench.storage.files import atomic_write_bytes, cache_root
from salip_bench.types import Candidates

log = logging.getLogger(__name__)
T = TypeVar("T")
FORMAT_VERSION = 1  # part of every key: bump when a stored layout or a key's meaning changes
LOW_WATER = 0.9  # eviction frees down to this fraction of max_gb, so it does not run on every write


def default_dir() -> Path:
    """$SALIP_BENCH_CACHE/features or ~/.cache/salip_bench/features."""
    return cache_root() / "features"


class FeatureCache:
    """SAM embeddings (``embeddings/*.pt``), generator proposals (``proposals/*.npz``) and CLIP
    embeddings of visual prompts (``clip/*.npz``, see ``engines/clip_cache.py``) under ``root``.

    root: the cache directory; embeddings / proposals / clip: whether that kind is read and written;
    max_gb: size bound of the whole directory; beyond it the least recently used files (by
    modification time, refreshed on every hit) are deleted. ``hits`` / ``misses`` count lookups
    per kind in this process.
    """

    def __init__(self, root: Path | str, embeddings: bool = True, proposals: bool = True, max_gb: float = 20.0,
                 clip: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.embeddings = embeddings
        self.proposals = proposals
        self.clip = clip
        self.max_bytes = int(max_gb * 1e9)
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self._size: int | None = None  # bytes on disk, scanned on the first write

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> FeatureCache | None:
        """The ``cache`` config section → a cache, or None when it is absent or disabled."""
        if not cfg or not cfg.get("enabled", True):
            return None
        return cls(cfg.get("dir") or default_dir(), cfg.get("embeddings", True), cfg.get("proposals", True),
                   cfg.get("max_gb", 20.0), cfg.get("clip", True))

    @staticmethod
    def key(*parts: object) -> str:
        """Hash of JSON-serialisable parts (dict keys sorted), prefixed by the format version."""
        text = json.dumps([FORMAT_VERSION, *parts], sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()

    def path(self, kind: str, key: str) -> Path:
        suffix = ".pt" if kind == "embeddings" else ".npz"
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def load_embedding(self, key: str) -> dict | None:
        """The ``{name: tensor}`` stored under ``key`` (on CPU), or None."""
        return self._read("embeddings", key,
                          lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def save_embedding(self, key: str, value: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in value.items()}, buffer)
        self._write("embeddings", key, buffer.getvalue())

    def load_candidates(self, key: str) -> Candidates | None:
        def decode(data: bytes) -> Candidates:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                n, height, width = (int(v) for v in arrays["shape"])
                masks = np.unpackbits(arrays["masks"], axis=1, count=height * width).reshape(n, height, width)
                return Candidates(masks.view(bool), arrays["boxes"], arrays["areas"], arrays["predicted_iou"],
                                  arrays["stability_score"])
        return self._read("proposals", key, decode)

    def save_candidates(self, key: str, candidates: Candidates) -> None:
        n, height, width = candidates.masks.shape
        buffer = io.BytesIO()  # masks bit-packed: 1 bit a pixel; np.savez stores no pickles
        np.savez(buffer, shape=np.array([n, height, width]),
                 masks=np.packbits(candidates.masks.reshape(n, height * width), axis=1), boxes=candidates.boxes,
                 areas=candidates.areas, predicted_iou=candidates.predicted_iou,
                 stability_score=candidates.stability_score)
        self._write("proposals", key, buffer.getvalue())

    def load_clip_embeddings(self, key: str) -> tuple[list[str], np.ndarray] | None:
        """The candidate keys and (N, D) float32 embeddings stored under ``key``, or None."""
        def decode(data: bytes) -> tuple[list[str], np.ndarray]:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return [k.decode() for k in arrays["keys"]], arrays["embeddings"]
        return self._read("clip", key, decode)

    def save_clip_embeddings(self, key: str, keys: list[str], embeddings: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array([k.encode() for k in keys]), embeddings=embeddings.astype(np.float32))
        self._write("clip", key, buffer.getvalue())

    def _read(self, kind: str, key: str, decode: Callable[[bytes], T]) -> T | None:
        path = self.path(kind, key)
        try:
            value = decode(path.read_bytes())
        except FileNotFoundError:  # absent, or evicted by another process meanwhile
            self.misses[kind] += 1
            return None
        except Exception as err:  # any unreadable file is a miss, recomputed and rewritten
            log.warning("feature cache: ignoring unreadable %s (%s: %s)", path, type(err).__name__, err)
            self.misses[kind] += 1
            return None
        try:
            os.utime(path)  # mark as recently used, for eviction
        except OSError:
            pass  # a read-only cache still serves hits
        self.hits[kind] += 1
        return value

    def _write(self, kind: str, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.path(kind, key), data)
        except OSError as err:  # full disk, read-only dir, racing eviction: the run goes on uncached
            log.warning("feature cache: could not write %s (%s)", self.path(kind, key), err)
            return
        if self._size is None:
            self._size = self.disk_bytes()
        else:
            self._size += len(data)
        if self._size > self.max_bytes:
            self.evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.root.glob("*/*/*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def disk_bytes(self) -> int:
        return sum(size for _, size, _ in self._files())

    def evict(self) -> None:
        """Delete least recently used files until the cache holds at most LOW_WATER × max_gb."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= LOW_WATER * self.max_bytes:
                break
            try:
                path.unlink(missing_ok=True)
            except OSError:  # not ours to delete (read-only): leave it
                continue
            total -= size
        self._size = total
