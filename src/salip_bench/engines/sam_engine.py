"""Engine ``sam``: SAM v1 (ViT-B/L/H, and the tiny test variant), with every role a stage asks of it.

The engine owns the model, a memo of image embeddings, the disk feature cache with its keys, and
its count of image-encoder passes. It composes upstream's parts rather than subclassing them: an
upstream ``SamPredictor`` is handed the memoised embedding (its public ``features`` /
``original_size`` / ``input_size``), so the refiner's box prompts on the image the generator
already encoded cost no encoder pass, nor does a later run on the same image and model; the
everything mode is ``engines/sam_grid.py`` on that predictor. Each public method opens a
:func:`~salip_bench.storage.content_keys.hashed_once` scope: an image is hashed once per call
(once per sample inside the harness's scope) and that key is in every cache key.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from torch import nn

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.box_scores import BoxMasks, BoxScores, stability_score
from salip_bench.engines.memo import DiskCodec
from salip_bench.engines.sam_grid import PROPOSALS_VERSION, DecodedGrid, EverythingSettings, apply_grid, decode_grid
from salip_bench.engines.sam_model import load_sam
from salip_bench.engines.weights import weights_identity
from salip_bench.registry import ENGINES
from salip_bench.storage.content_keys import hashed_once, image_key
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.types import Candidates

IMAGE_FORMAT = "RGB"  # the predictor's input format, part of every embedding key
PROPOSALS = DiskCodec("proposals", FeatureCache.load_candidates, FeatureCache.save_candidates)


def _outputs_as_float32(module: nn.Module, inputs: tuple, output: object) -> object:
    """Forward hook: floating-point tensors in a network's output as float32 (a no-op without autocast)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple):
        return tuple(_outputs_as_float32(module, inputs, o) for o in output)
    return output


class SamV1Engine(BaseEngine):
    """SAM v1 with the box-prompted and the everything role (split into its expensive and cheap halves).

    Args:
        sam: the model.
        identity: where its weights come from (reported in run summaries).
        config: its config entry (with the weights, what cached embeddings and proposals depend on).
        memo_size: image embeddings kept in memory.
    """

    COUNTERS = ("encoder_passes", "everything_passes")

    def __init__(self, sam: Sam, identity: dict, config: dict | None = None, memo_size: int = 8) -> None:
        super().__init__(identity, config)
        self.sam = sam.eval()
        self.predictor = SamPredictor(self.sam)
        self.embeddings = self.memo(memo_size, DiskCodec("embeddings", self._load_embedding, self._save_embedding))
        self.proposals = self.memo(0, PROPOSALS)  # on disk only: a run asks for an image's proposals once
        self.sam.image_encoder.register_forward_hook(self._count_pass)
        # Under autocast (trainer.precision=bf16-mixed) the networks run in bf16, but what they hand
        # on is float32: upscaling logits and thresholding them at 0 stay as precise as without it,
        # and upstream's numpy conversions (which reject bf16) keep working.
        for network in (self.sam.image_encoder, self.sam.mask_decoder):
            network.register_forward_hook(_outputs_as_float32)

    def _count_pass(self, *_: object) -> None:
        self.encoder_passes += 1

    def reset(self) -> None:
        super().reset()
        self.predictor.reset_image()

    def _load_embedding(self, cache: FeatureCache, key: str) -> tuple | None:
        stored = cache.load_embedding(key)
        if stored is None:
            return None
        return (stored["features"].to(self.device), tuple(stored["original_size"].tolist()),
                tuple(stored["input_size"].tolist()))

    @staticmethod
    def _save_embedding(cache: FeatureCache, key: str, value: tuple) -> None:
        features, original_size, input_size = value
        cache.save_embedding(key, {"features": features, "original_size": torch.tensor(original_size),
                                   "input_size": torch.tensor(input_size)})

    def _encoded(self, image: np.ndarray) -> tuple:
        self.predictor.set_image(image, IMAGE_FORMAT)
        return self.predictor.features, self.predictor.original_size, self.predictor.input_size

    @torch.no_grad()
    def prepared(self, image: np.ndarray, key: str | None = None) -> SamPredictor:
        """The engine's upstream ``SamPredictor`` holding ``image``'s embedding: from memory if it saw
        the image recently, else from the disk cache, else one encoder pass (stored in both).

        Args:
            image: (H, W, 3) uint8 RGB.
            key: ``image``'s content key when the caller has it (default: computed here).
        """
        embedding_key = self.cache_key("embedding", (key or image_key(image)) + IMAGE_FORMAT)
        predictor = self.predictor
        predictor.features, predictor.original_size, predictor.input_size = self.embeddings.fetch(
            embedding_key, lambda: self._encoded(image))
        predictor.is_image_set = True
        return predictor

    def _prepared_crop(self, image: np.ndarray, key: str, box: list[int]) -> SamPredictor:
        """The predictor holding the embedding of ``image``'s crop ``box`` (XYXY); a crop's key is
        derived from the image's, so no crop is hashed."""
        x0, y0, x1, y1 = box
        if [x0, y0, x1, y1] == [0, 0, image.shape[1], image.shape[0]]:
            return self.prepared(image, key)  # the refiner's set_image then finds this very embedding
        return self.prepared(image[y0:y1, x0:x1, :], f"{key}:crop{x0},{y0},{x1},{y1}")

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool,
                      with_scores: bool = False) -> np.ndarray | BoxMasks:
        """One mask per XYXY box (the best-scored of three when ``multimask_output``); (K, H, W) bool
        (``with_scores``: with SAM's predicted IoU and stability of each, see ``engines/box_scores.py``)."""
        predictor = self.prepared(image)
        out, scored = np.zeros((len(boxes), *image.shape[:2]), bool), BoxScores(len(boxes))
        for i, box in enumerate(boxes):
            masks, scores, _ = predictor.predict(box=np.asarray(box, np.float32), multimask_output=multimask_output,
                                                 return_logits=True)  # logits, for the stability score
            out[i] = scored.add(i, masks, scores, self.sam.mask_threshold)  # = upstream's masks > threshold
        return scored.result(out) if with_scores else out

    @torch.no_grad()
    def segment_unprompted(self, image: np.ndarray, multimask_output: bool) -> tuple[np.ndarray, float, float]:
        """The no-point, no-box, no-mask decoder output (the best of three by predicted IoU when
        ``multimask_output``): (H, W) bool mask, its predicted IoU and stability score."""
        logits, scores, _ = self.prepared(image).predict(multimask_output=multimask_output, return_logits=True)
        best, threshold = int(np.argmax(scores)), self.sam.mask_threshold
        # upstream's mask (logits > threshold), thresholded here so the logits give the stability too
        return logits[best] > threshold, float(scores[best]), stability_score(logits[best], threshold)

    @torch.no_grad()
    def initialize_everything(self, image: np.ndarray, settings: Mapping[str, object],
                              min_pred_iou_thresh: float | None = None) -> DecodedGrid:
        """The expensive half of everything mode: the encoder (memoised) and mask decoder of every crop.

        Args:
            image: (H, W, 3) uint8 RGB.
            settings: :class:`~salip_bench.engines.sam_grid.EverythingSettings` knobs (only the grid
                ones are read here).
            min_pred_iou_thresh: keep the masks whose predicted IoU is above it (default: the
                settings' ``pred_iou_thresh``; <= 0: all of them).
        """
        knobs = EverythingSettings(**settings)
        floor = knobs.pred_iou_thresh if min_pred_iou_thresh is None else min_pred_iou_thresh
        self.everything_passes += 1
        with hashed_once():
            key = image_key(image)
            return decode_grid(lambda box: self._prepared_crop(image, key, box), image.shape[:2], knobs, floor)

    @torch.no_grad()
    def apply_everything(self, decoded: DecodedGrid, settings: Mapping[str, object]) -> Candidates:
        """The cheap half: thresholds, upscaling, stability filter, NMS and uncropping of ``decoded``
        (from :meth:`initialize_everything` with the same grid settings and a floor at or below
        ``settings['pred_iou_thresh']``)."""
        return apply_grid(self.sam, decoded, EverythingSettings(**settings))

    @torch.no_grad()
    def cached_proposals(self, image: np.ndarray, settings: Mapping[str, object],
                         compute: Callable[[], Candidates]) -> Candidates:
        """``image``'s everything-mode candidates from the disk cache, else ``compute()`` (stored).

        Args:
            image: (H, W, 3) uint8 RGB.
            settings: every knob (all of them are in the key).
            compute: the candidates on a miss, e.g. ``apply_everything(initialize_everything(...))``.
        """
        with hashed_once():
            key = self.cache_key("proposals", PROPOSALS_VERSION, EverythingSettings(**settings).as_dict(),
                                 image_key(image))
            return self.proposals.fetch(key, compute)

    def everything(self, image: np.ndarray, **settings: object) -> Candidates:
        """Upstream ``SamAutomaticMaskGenerator(sam, **settings).generate(image)``'s masks, scores and
        order as :class:`Candidates` (boxes: the masks' tight boxes), through the proposals cache."""
        return self.cached_proposals(
            image, settings, lambda: self.apply_everything(self.initialize_everything(image, settings), settings))


@ENGINES.register("sam")
def build_sam_engine(cfg: dict, weights: str, key: str = "model") -> SamV1Engine:
    """SAM v1 from a ``conf/model/sam_*.yaml`` entry (build it with :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the entry.
        weights: ``pretrained`` or ``random``.
        key: the config key that picked it, named in messages.
    """
    sam, path = load_sam(cfg, weights, key)
    return SamV1Engine(sam, weights_identity("sam", cfg["name"], path, int(cfg.get("random_seed", 0))), cfg)
