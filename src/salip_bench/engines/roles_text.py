"""The roles of the CLIP-family and text-prompted engines, as duck-typed protocols.

Every engine also has ``identity: dict`` (what its weights are), ``counters() -> dict[str, int]``
(work done) and ``reset()`` (zero the counters, drop per-image memo) — see :class:`Engine`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image


@runtime_checkable
class Engine(Protocol):
    identity: dict

    def counters(self) -> dict[str, int]: ...

    def reset(self) -> None: ...


@runtime_checkable
class ImageTextEmbedder(Engine, Protocol):
    """Image/text embedding (the retrievers' CLIP): L2-normalised float32 rows on CPU."""

    images_encoded: int
    texts_encoded: int

    @property
    def embed_dim(self) -> int: ...

    def encode_images(self, images: Sequence[np.ndarray | Image.Image], batch_size: int = 32,
                      workers: int = 1) -> torch.Tensor: ...

    def encode_built(self, count: int, build: Callable[[int], np.ndarray | Image.Image], batch_size: int = 32,
                     workers: int = 1) -> torch.Tensor: ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...


@runtime_checkable
class TextPromptSegmenter(Engine, Protocol):
    """Text-prompted instance segmentation (SAM 3's concept prompts)."""

    def segment_text(self, image: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every instance of the concept ``text`` in ``image`` ((H, W, 3) uint8).

        Returns masks (N, H, W) bool, scores (N,) float32 and boxes (N, 4) float32 XYXY pixels,
        best score first.
        """
        ...
