"""What a stage may ask of an engine: one small protocol per role, duck-typed.

A stage plugin calls only these methods, so any engine with the role can serve it: the
``sam_box`` refiner works with SAM v1, SAM 2.1 or MedSAM alike. An engine that lacks a role a
stage needs is refused with :func:`require_role`, naming the config key that picked the engine.
A new role is one ``@role`` protocol here and one method on each engine that offers it
(``engines/base.py`` gives the engine its memos, counters and cache).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from salip_bench.registry import PluginError
from salip_bench.types import Candidates

ROLE_NAMES: dict[type, str] = {}  # role protocol -> how messages name it


def role(description: str) -> Callable[[type], type]:
    """Register a role protocol (runtime-checkable) under the name messages give it.

    Args:
        description: e.g. ``box-prompted segmentation (segment_boxes)``.
    """
    def register(protocol: type) -> type:
        checkable = runtime_checkable(protocol)
        ROLE_NAMES[checkable] = description
        return checkable
    return register


@runtime_checkable
class Engine(Protocol):
    """What every engine has: where its weights come from, the work it did, and a reset."""

    identity: dict

    def counters(self) -> dict[str, int]:
        """Work done since the last reset, e.g. ``{"encoder_passes": n}``."""

    def reset(self) -> None:
        """Zero the counters and drop per-image memos (a multirun's next job reuses the engine)."""


@role("box-prompted segmentation (segment_boxes)")
class BoxPromptSegmenter(Protocol):
    """Box-prompted segmentation: one mask per box."""

    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool) -> np.ndarray:
        """Masks for ``boxes``.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (K, 4) XYXY in pixel coordinates of ``image`` (inclusive corners, as a tight box
                of a mask is).
            multimask_output: ask for several masks per box and keep the best-scored one.

        Returns:
            (K, H, W) bool.
        """


@role("point-grid everything generation (everything)")
class EverythingGenerator(Protocol):
    """Point-grid ("segment everything") mask generation with SAM's automatic-mask-generator knobs."""

    def everything(self, image: np.ndarray, **settings: object) -> Candidates:
        """Part masks of ``image`` (H, W, 3 uint8) from a regular point grid.

        Args:
            image: (H, W, 3) uint8 RGB.
            settings: ``points_per_side``, ``pred_iou_thresh``, ... as in ``conf/generator/sam_everything.yaml``.
        """


@role("split everything generation (initialize_everything, apply_everything)")
class SplitEverythingGenerator(EverythingGenerator, Protocol):
    """Everything generation split as micro-sam splits its generator: an expensive ``initialize``
    (encoder and decoder passes for one image and grid) and a cheap ``apply`` of the thresholds,
    so one decoding serves several settings (tuning); proposals cached by the engine."""

    def initialize_everything(self, image: np.ndarray, settings: Mapping[str, object],
                              min_pred_iou_thresh: float | None = None) -> Any:
        """The decoder outputs of ``image`` for ``settings``' grid, keeping the masks whose predicted
        IoU is above ``min_pred_iou_thresh`` (default: ``settings['pred_iou_thresh']``)."""

    def apply_everything(self, decoded: Any, settings: Mapping[str, object]) -> Candidates:
        """``settings``' thresholds, filters and NMS applied to an :meth:`initialize_everything` result."""

    def cached_proposals(self, image: np.ndarray, settings: Mapping[str, object],
                         compute: Callable[[], Candidates]) -> Candidates:
        """``image``'s candidates for ``settings`` from the engine's cache, else ``compute()``."""


@role("image/text embedding (encode_images, encode_texts)")
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


@role("text-prompted segmentation (segment_text)")
class TextPromptSegmenter(Engine, Protocol):
    """Text-prompted instance segmentation (SAM 3's concept prompts)."""

    def segment_text(self, image: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every instance of the concept ``text`` in ``image`` ((H, W, 3) uint8).

        Returns masks (N, H, W) bool, scores (N,) float32 and boxes (N, 4) float32 XYXY pixels,
        best score first.
        """
        ...


@role("unprompted segmentation (segment_unprompted)")
class UnpromptedSegmenter(Protocol):
    """Segmentation with no prompt at all: SAM's decoder on its default (no point, box or mask) embeddings."""

    def segment_unprompted(self, image: np.ndarray, multimask_output: bool) -> tuple[np.ndarray, float, float]:
        """The mask of ``image`` ((H, W, 3) uint8), its predicted IoU and its stability score; with
        ``multimask_output`` the best-scored of the decoder's masks. Returns an (H, W) bool mask and two floats."""


@role("volume propagation (propagate: SAM 2's video predictor)")
class Propagator(Engine, Protocol):
    """Mask propagation through a volume's slices as video frames, from key-slice masks."""

    def reserved(self, n_frames: int, held: int, offload_state_to_cpu: bool = False,
                 max_state_gb: float | None = 8.0) -> AbstractContextManager[None]:
        """A block in which a volume is worked on: refused before any work (MemoryError, one line) when
        its frame memory and ``held`` images' features exceed ``max_state_gb``; inside, the features
        of the next ``held`` images encoded are kept for the propagation.

        Args:
            n_frames: the volume's slices.
            held: images encoded in the block whose features the propagation reuses.
            offload_state_to_cpu: keep the per-frame memory on the CPU.
            max_state_gb: the bound (None: none).
        """

    def propagate(self, frames: np.ndarray, keys: Mapping[int, np.ndarray], offload_state_to_cpu: bool = False,
                  max_state_gb: float | None = 8.0) -> Any:
        """Per-slice masks and object scores (a :class:`~salip_bench.engines.sam2_propagate.Propagation`).

        Args:
            frames: (N, H, W, 3) uint8 RGB slices.
            keys: {slice index: (H, W) bool mask} to start from.
            offload_state_to_cpu: keep the per-frame memory on the CPU.
            max_state_gb: refuse, before any work, a volume whose frame memory would exceed this.
        """


class MissingRoleError(PluginError):
    """An engine was given to a stage whose role it does not have."""


def require_role(engine: object, role: type, stage: str, offered_by: str = "") -> None:
    """Raise a one-line :class:`MissingRoleError` unless ``engine`` has ``role``.

    Args:
        engine: the engine handed to the stage.
        role: one of this module's protocols.
        stage: the stage's name for the message (e.g. ``generator sam_everything``).
        offered_by: the configs whose engines have the role, suggested in the message (e.g. ``model=sam3``).

    The message names the config key that picked the engine (its ``chosen_by``, set by
    :func:`~salip_bench.engines.builder.build_engine`: ``model``, ``model@refiner_model``, ``clip``).
    """
    if not isinstance(engine, role):
        name = getattr(engine, "identity", {}).get("model", type(engine).__name__)
        key = getattr(engine, "chosen_by", "model")
        suggestion = f" ({offered_by})" if offered_by else ""
        raise MissingRoleError(f"{stage} needs {ROLE_NAMES.get(role, role.__name__)}, which engine {name!r} "
                               f"(chosen by {key}=) does not have; choose another {key}={suggestion}")
