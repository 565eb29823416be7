"""Engine ``sam2``: SAM 2.1 with the official predictor and automatic mask generator, its image
features memoised (in memory, and on disk in the run's feature cache).

The ``sam2`` package is imported only when such an engine is built: importing it costs time and
touches Hydra's global state, which :func:`import_leaving_hydra_alone` puts back.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.box_scores import BoxMasks, BoxScores
from salip_bench.engines.hydra_guard import import_leaving_hydra_alone
from salip_bench.engines.memo import DiskCodec
from salip_bench.engines.sam2_model import build_sam2_model, load_sam2_checkpoint
from salip_bench.engines.sam2_propagate import Propagation, check_memory, propagate
from salip_bench.engines.weights import WeightsSource, pretrained_or_random, resolve_weights, weights_identity
from salip_bench.registry import ENGINES
from salip_bench.storage.content_keys import image_key
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.types import Candidates

log = logging.getLogger(__name__)


@contextmanager
def root_info_muted():
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


def load_features(cache: FeatureCache, key: str) -> tuple | None:
    """(original size, features) of one image as :func:`save_features` stored them (on CPU), or None."""
    stored = cache.load_embedding(key)
    if stored is None:
        return None
    high_res = sorted((k for k in stored if k.startswith("high_res_feats.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [tuple(stored["orig_hw"].tolist())], {"image_embed": stored["image_embed"],
                                                 "high_res_feats": [stored[k] for k in high_res]}


def save_features(cache: FeatureCache, key: str, value: tuple) -> None:
    orig_hw, features = value
    tensors = {"image_embed": features["image_embed"], "orig_hw": torch.tensor(orig_hw[0])}
    tensors |= {f"high_res_feats.{i}": t for i, t in enumerate(features["high_res_feats"])}
    cache.save_embedding(key, tensors)


@functools.cache
def memo_predictor_class() -> type:
    """``SAM2ImagePredictor`` whose ``set_image`` takes an image's features from its engine's memo:
    the automatic mask generator and the box refiner of one run then encode each image once, and
    a later run none. Everything else is upstream's (defined on first use: it imports sam2)."""
    predictor_class = import_leaving_hydra_alone("sam2.sam2_image_predictor").SAM2ImagePredictor

    class MemoSam2Predictor(predictor_class):
        def __init__(self, sam_model: nn.Module, features: Callable[[np.ndarray, Callable[[], tuple]], tuple],
                     **kwargs: object) -> None:
            super().__init__(sam_model, **kwargs)
            self._bb_feat_sizes = backbone_feature_sizes(sam_model.image_size)
            self.features = features

        @torch.no_grad()
        def set_image(self, image: np.ndarray) -> None:
            """Make ``image`` (H, W, 3 uint8 RGB) the predictor's image, its encoding memoised by content."""
            orig_hw, features = self.features(image, lambda: self._encode(image))
            self.reset_predictor()
            self._orig_hw, self._features = orig_hw, features
            self._is_image_set = True

        def _encode(self, image: np.ndarray) -> tuple:
            with root_info_muted():
                super().set_image(image)
            return self._orig_hw, self._features

    return MemoSam2Predictor


class Sam2Engine(BaseEngine):
    """SAM 2.1 with the box-prompted, the everything and the propagation role, and counts of encoder
    passes, everything passes and propagation frames.

    Args:
        model: a ``SAM2Base``.
        identity: where its weights come from (reported in run summaries).
        config: its config entry (architecture yaml and overrides); with the identity, part of
            every disk key.
        memo_size: images whose features are kept in memory.
    """

    COUNTERS = ("encoder_passes", "everything_passes", "propagation_frames")

    def __init__(self, model: nn.Module, identity: dict, config: dict | None = None, memo_size: int = 8) -> None:
        super().__init__(identity, config)
        self.model = model.eval()
        self.feature_memo = self.memo(memo_size, DiskCodec("embeddings", self._load, save_features))
        self.predictor = memo_predictor_class()(self.model, self.features)
        self.model.image_encoder.register_forward_hook(self._count_pass)

    def _load(self, cache: FeatureCache, key: str) -> tuple | None:
        stored = load_features(cache, key)
        if stored is None:
            return None
        orig_hw, features = stored
        return orig_hw, {"image_embed": features["image_embed"].to(self.device),
                         "high_res_feats": [t.to(self.device) for t in features["high_res_feats"]]}

    def features(self, image: np.ndarray, encode: Callable[[], tuple], remember: bool = True) -> tuple:
        """(original size, features) of ``image``: memoised, stored on disk, else ``encode()`` (stored;
        kept in memory unless not ``remember``)."""
        return self.feature_memo.fetch(self.cache_key("embedding", image_key(image)), encode, remember)

    def _count_pass(self, *_: object) -> None:
        self.encoder_passes += 1

    def reset(self) -> None:
        super().reset()
        self.predictor.reset_predictor()

    def frame_features(self, image: np.ndarray, keep: bool = False) -> tuple:
        """(original size, features) of a propagation frame: from the memo (or disk) when there, else
        encoded and kept in memory only if ``keep`` or the memo has room: a propagation visits each
        frame once, and keeping its frames must not push out features still to be used (the sampled
        slices' ones); with room, the volume's next organ finds them."""
        remember = keep or self.feature_memo.has_room()
        return self.features(image, lambda: self.predictor._encode(image), remember=remember)

    @contextmanager
    def reserved(self, n_frames: int, held: int, offload_state_to_cpu: bool = False,
                 max_state_gb: float | None = 8.0) -> Iterator[None]:
        """The :class:`~salip_bench.engines.roles.Propagator` role's reservation: refuse (MemoryError,
        one line) a volume whose frame memory and held features would exceed ``max_state_gb``, then
        keep the next ``held`` images' features in memory until the block ends.

        Args:
            n_frames: the volume's slices.
            held: images encoded in the block whose features a later propagation reuses.
            offload_state_to_cpu: where the frame memory will live.
            max_state_gb: the bound (None: none).
        """
        check_memory(self.model, n_frames, held, offload_state_to_cpu, max_state_gb)
        with self.feature_memo.widened(held):
            yield

    def propagate(self, frames: np.ndarray, keys: Mapping[int, np.ndarray], offload_state_to_cpu: bool = False,
                  max_state_gb: float | None = 8.0) -> Propagation:
        """The :class:`~salip_bench.engines.roles.Propagator` role: SAM 2's video predictor on this
        engine's model, seeded with ``keys`` and run forward then backward through ``frames``.

        Args:
            frames: (N, H, W, 3) uint8 RGB slices of one volume.
            keys: {slice index: (H, W) bool mask}.
            offload_state_to_cpu: keep SAM 2's per-frame memory on the CPU.
            max_state_gb: a volume whose per-frame memory would exceed this is refused before any work.
        """
        result = propagate(self.model, self.frame_features, frames, keys, offload_state_to_cpu, max_state_gb)
        self.propagation_frames += result.frames_run
        return result

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool,
                      with_scores: bool = False) -> np.ndarray | BoxMasks:
        """One mask per box (the best-scored of three when ``multimask_output``).

        The :class:`~salip_bench.engines.roles.BoxPromptSegmenter` role: (K, H, W) bool masks
        (``with_scores``: with SAM 2's predicted IoU and stability of each, ``engines/box_scores.py``).
        """
        self.predictor.set_image(image)
        out, scored = np.zeros((len(boxes), *image.shape[:2]), bool), BoxScores(len(boxes))
        for i, box in enumerate(boxes):
            masks, scores, _ = self.predictor.predict(box=np.asarray(box, np.float32),
                                                      multimask_output=multimask_output,
                                                      return_logits=True)  # logits, for the stability score
            out[i] = scored.add(i, masks, scores, 0.0)  # = upstream's masks > 0
        return scored.result(out) if with_scores else out

    @torch.no_grad()
    def everything(self, image: np.ndarray, **settings: object) -> Candidates:
        """Upstream ``SAM2AutomaticMaskGenerator(**settings).generate(image)`` as :class:`Candidates`.

        Args:
            image: (H, W, 3) uint8 RGB.
            **settings: the generator's keyword arguments (points_per_side, thresholds, ...).

        Returns:
            Its masks, boxes and order; boxes XYXY with inclusive corners.
        """
        generator_class = import_leaving_hydra_alone("sam2.automatic_mask_generator").SAM2AutomaticMaskGenerator
        generator = generator_class(self.model, output_mode="binary_mask", **settings)
        # Same post-processing settings as upstream gave its predictor (min_mask_region_area), plus
        # our feature sizes and the engine's memo: the refiner's boxes then need no encoder pass.
        transforms = generator.predictor._transforms
        generator.predictor = memo_predictor_class()(self.model, self.features,
                                                     max_hole_area=transforms.max_hole_area,
                                                     max_sprinkle_area=transforms.max_sprinkle_area)
        records = generator.generate(image)
        self.everything_passes += 1
        if not records:
            return Candidates.empty(*image.shape[:2])
        masks = np.stack([r["segmentation"] for r in records]).astype(bool)
        xywh = np.array([r["bbox"] for r in records], np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return Candidates(masks=masks, boxes=boxes, areas=np.array([r["area"] for r in records], np.int64),
                          predicted_iou=np.array([r["predicted_iou"] for r in records], np.float32),
                          stability_score=np.array([r["stability_score"] for r in records], np.float32))


@ENGINES.register("sam2")
def build_sam2_engine(cfg: dict, weights: str, key: str = "model") -> Sam2Engine:
    """SAM 2.1 from a ``conf/model/sam2_*.yaml`` entry (build it with
    :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the entry: ``config`` (an architecture yaml of the sam2 package), ``arch_overrides``,
            ``checkpoint`` / ``checkpoint_file`` / ``url`` or ``hub_repo`` (MedSAM2's).
        weights: ``pretrained`` or ``random``.
        key: the config key that picked it, named in messages.
    """
    source = WeightsSource(f"SAM 2.1 {cfg['name']}", cfg["checkpoint_file"], f"{key}.checkpoint", cfg.get("checkpoint"),
                           cfg.get("url"), hub_repo=cfg.get("hub_repo"))
    path = pretrained_or_random(cfg, weights, lambda: resolve_weights(source))
    model = build_sam2_model(cfg)
    if path is not None:
        load_sam2_checkpoint(model, path)
        log.info("SAM 2.1 %s loaded from %s", cfg["name"], path)
    return Sam2Engine(model, weights_identity("sam2", cfg["name"], path, int(cfg.get("random_seed", 0))), cfg)
