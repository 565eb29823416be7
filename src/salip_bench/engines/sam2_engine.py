"""The SAM 2.1 engine: the official predictor and automatic mask generator, embeddings memoised
(in memory, and on disk in the run's feature cache).

Imported only when a ``sam2`` engine is built (``engines/sam2.py``): importing ``sam2`` costs
time and touches Hydra's global state, which :func:`import_leaving_hydra_alone` puts back.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from salip_bench.engines.box_scores import BoxMasks, BoxScores  # qc
from salip_bench.engines.hydra_guard import import_leaving_hydra_alone
from salip_bench.engines.sam import autocast_dtype
from salip_bench.engines.weights import sam_model_id
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.storage.content_keys import image_key
from salip_bench.types import Candidates

SAM2ImagePredictor = import_leaving_hydra_alone("sam2.sam2_image_predictor").SAM2ImagePredictor
SAM2AutomaticMaskGenerator = import_leaving_hydra_alone("sam2.automatic_mask_generator").SAM2AutomaticMaskGenerator


@contextmanager
def root_info_muted():  # noqa: ANN201
    """Upstream logs every embedding at INFO on the root logger (ours prints INFO): mute it meanwhile."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def backbone_feature_sizes(image_size: int) -> list[tuple[int, int]]:
    """Sides of the three feature maps the SAM 2 heads read (strides 4, 8, 16).

    Upstream's predictor hard-codes them for 1024 px input; a smaller model (``sam2_tiny``) needs
    its own.

    Args:
        image_size: the model's input side in pixels.

    Returns:
        ``(height, width)`` of each of the three maps.
    """
    return [(image_size // stride, image_size // stride) for stride in (4, 8, 16)]


class Sam2FeatureMemo:
    """Image features of one SAM 2 engine by image content: in memory, and in a disk
    :class:`~salip_bench.storage.feature_cache.FeatureCache` when one is attached.

    memo_size: entries kept in memory; cache_key: parts -> the disk key (carries the engine's
    identity, device and autocast dtype); cache: the disk layer, or None.
    """

    def __init__(self, cache_key: Callable[..., str], memo_size: int = 8) -> None:
        self.cache_key = cache_key
        self.memo_size = memo_size
        self.cache: FeatureCache | None = None
        self._memo: OrderedDict[str, tuple] = OrderedDict()

    def get(self, image: np.ndarray, device: torch.device, encode: Callable[[], tuple]) -> tuple:
        """(original size, features) of ``image``: memoised, stored on disk, else ``encode()`` (stored)."""
        key = image_key(image)
        if key not in self._memo:
            self._memo[key] = self._stored(key, device) or self._encoded(key, encode)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        return self._memo[key]

    def _stored(self, key: str, device: torch.device) -> tuple | None:
        if self.cache is None or not self.cache.embeddings:
            return None
        stored = self.cache.load_embedding(self.cache_key("embedding", key))
        if stored is None:
            return None
        high_res = sorted((k for k in stored if k.startswith("high_res_feats.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        features = {"image_embed": stored["image_embed"].to(device),
                    "high_res_feats": [stored[k].to(device) for k in high_res]}
        return [tuple(stored["orig_hw"].tolist())], features

    def _encoded(self, key: str, encode: Callable[[], tuple]) -> tuple:
        orig_hw, features = encode()
        if self.cache is not None and self.cache.embeddings:
            tensors = {"image_embed": features["image_embed"], "orig_hw": torch.tensor(orig_hw[0])}
            tensors |= {f"high_res_feats.{i}": t for i, t in enumerate(features["high_res_feats"])}
            self.cache.save_embedding(self.cache_key("embedding", key), tensors)
        return orig_hw, features

    def clear(self) -> None:
        self._memo.clear()


class MemoSam2Predictor(SAM2ImagePredictor):
    """``SAM2ImagePredictor`` whose ``set_image`` takes an image's features from the engine's
    :class:`Sam2FeatureMemo`: the automatic mask generator and the box refiner of one run then
    encode each image once, and a later run none. Everything else is upstream's.

    memo: shared by every predictor of one engine.
    """

    def __init__(self, sam_model: nn.Module, memo: Sam2FeatureMemo, **kwargs: object) -> None:
        super().__init__(sam_model, **kwargs)
        self._bb_feat_sizes = backbone_feature_sizes(sam_model.image_size)
        self.memo = memo

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Make ``image`` (H, W, 3 uint8 RGB) the predictor's image, its encoding memoised by content."""
        orig_hw, features = self.memo.get(image, self.device, lambda: self._encode(image))
        self.reset_predictor()
        self._orig_hw, self._features = orig_hw, features
        self._is_image_set = True

    def _encode(self, image: np.ndarray) -> tuple:
        with root_info_muted():
            super().set_image(image)
        return self._orig_hw, self._features


class Sam2Engine(nn.Module):
    """SAM 2.1 with the box-prompted and the everything role, and a count of encoder passes.

    Args:
        model: a ``SAM2Base``.
        identity: where its weights come from (reported in run summaries).
        arch: what else its features depend on (architecture yaml and overrides); with the
            identity, part of every disk key.
        cache: disk cache of image features, or None (memory only).
    """

    def __init__(self, model: nn.Module, identity: dict, arch: dict | None = None,
                 cache: FeatureCache | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.identity = identity
        self.encoder_passes = 0
        self.model_id = sam_model_id(identity, arch)
        self._memo = Sam2FeatureMemo(self.cache_key)
        self.use_cache(cache)
        self.predictor = MemoSam2Predictor(self.model, self._memo)
        self.model.image_encoder.register_forward_hook(self._count_pass)

    def cache_key(self, *parts: object) -> str:
        """Disk key of a value this model computes from ``parts`` (device and autocast dtype included:
        their numerics differ)."""
        device = next(self.model.parameters()).device.type
        return FeatureCache.key(self.model_id, device, autocast_dtype(device), *parts)

    def use_cache(self, cache: FeatureCache | None) -> None:
        """Read and write image features in ``cache`` from now on (None: memory only)."""
        self._memo.cache = cache

    def _count_pass(self, *_: object) -> None:
        self.encoder_passes += 1

    def counters(self) -> dict[str, int]:
        return {"encoder_passes": self.encoder_passes}

    def reset(self) -> None:
        """Zero the counters and drop memoised features (a multirun's next job reuses the engine)."""
        self.encoder_passes = 0
        self._memo.clear()
        self.predictor.reset_predictor()

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool,
                      with_scores: bool = False) -> np.ndarray | BoxMasks:
        """One mask per box (the best-scored of three when ``multimask_output``).

        The :class:`~salip_bench.engines.roles.BoxPromptSegmenter` role: (K, H, W) bool masks
        (``with_scores``: with SAM 2's predicted IoU and stability of each, ``engines/box_scores.py``).
        """
        self.predictor.set_image(image)
        out, scored = np.zeros((len(boxes), *image.shape[:2]), bool), BoxScores(len(boxes))  # qc: scores
        for i, box in enumerate(boxes):
            masks, scores, _ = self.predictor.predict(box=np.asarray(box, np.float32),
                                                      multimask_output=multimask_output,
                                                      return_logits=True)  # qc: logits, for the stability score
            out[i] = scored.add(i, masks, scores, 0.0)  # qc: = upstream's masks > 0
        return scored.result(out) if with_scores else out  # qc

    @torch.no_grad()
    def everything(self, image: np.ndarray, **settings: object) -> Candidates:
        """Upstream ``SAM2AutomaticMaskGenerator(**settings).generate(image)`` as :class:`Candidates`.

        Args:
            image: (H, W, 3) uint8 RGB.
            **settings: the generator's keyword arguments (points_per_side, thresholds, ...).

        Returns:
            Its masks, boxes and order; boxes XYXY with inclusive corners.
        """
        generator = SAM2AutomaticMaskGenerator(self.model, output_mode="binary_mask", **settings)
        # Same post-processing settings as upstream gave its predictor (min_mask_region_area), plus
        # our feature sizes and the engine's memo: the refiner's boxes then need no encoder pass.
        transforms = generator.predictor._transforms
        generator.predictor = MemoSam2Predictor(self.model, self._memo, max_hole_area=transforms.max_hole_area,
                                                max_sprinkle_area=transforms.max_sprinkle_area)
        records = generator.generate(image)
        if not records:
            return Candidates.empty(*image.shape[:2])
        masks = np.stack([r["segmentation"] for r in records]).astype(bool)
        xywh = np.array([r["bbox"] for r in records], np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return Candidates(masks=masks, boxes=boxes, areas=np.array([r["area"] for r in records], np.int64),
                          predicted_iou=np.array([r["predicted_iou"] for r in records], np.float32),
                          stability_score=np.array([r["stability_score"] for r in records], np.float32))
