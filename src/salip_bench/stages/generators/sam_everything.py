"""Generator ``sam_everything``: SAM's automatic ("segment everything") mask generation.

A thin plugin over its engine's everything role (``engines/roles.py``). With an engine that splits
the role as micro-sam splits its automatic mask generator (SAM v1, ``engines/sam_engine.py``),
:meth:`SamEverythingGenerator.initialize` runs the expensive passes for one image and point grid
(the encoder and mask decoder of every crop) and :meth:`SamEverythingGenerator.apply` the cheap
settings acting on their outputs (the quality thresholds, upscaling of the masks that pass them,
stability filter, NMS, uncropping). Tuning decodes each image and grid once and applies every
trial's thresholds to it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from salip_bench.accepts import UNIT, IntAtLeast, NumberIn, check_settings
from salip_bench.engines.roles import EverythingGenerator, SplitEverythingGenerator, require_role
from salip_bench.engines.sam_grid import GRID_SETTINGS, DecodedGrid
from salip_bench.registry import GENERATORS
from salip_bench.types import Candidates

# Upstream SamAutomaticMaskGenerator's knobs and the values they take.
ACCEPTS = {
    "points_per_side": IntAtLeast(1), "points_per_batch": IntAtLeast(1), "pred_iou_thresh": UNIT,
    "stability_score_thresh": UNIT, "stability_score_offset": NumberIn(0.0, 1e9),
    "box_nms_thresh": NumberIn(0.0, 1.0, low_open=True), "crop_nms_thresh": NumberIn(0.0, 1.0, low_open=True),
    "crop_n_layers": IntAtLeast(0), "crop_overlap_ratio": NumberIn(0.0, 1.0, high_open=True),
    "crop_n_points_downscale_factor": IntAtLeast(1), "min_mask_region_area": IntAtLeast(0)}


@GENERATORS.register("sam_everything")
class SamEverythingGenerator:
    """SAM prompted with a regular grid of points; every upstream ``SamAutomaticMaskGenerator`` knob.

    points_per_side: grid side (points = side²); points_per_batch: points decoded together;
    pred_iou_thresh / stability_score_thresh / stability_score_offset: quality filters;
    box_nms_thresh: NMS IoU within a crop; crop_n_layers / crop_nms_thresh / crop_overlap_ratio /
    crop_n_points_downscale_factor: multi-crop processing (0 layers = the full image only);
    min_mask_region_area: remove small holes/islands (pixels, 0 = off, needs OpenCV).
    ``sam`` is injected at run time: any engine with the everything role. SAM v1's memoised
    embeddings let the refiner reuse the encoder pass, and its cache (if any) keeps the proposals
    on disk, keyed by image, model and every setting.
    """

    def __init__(self, sam: EverythingGenerator, points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, min_mask_region_area: int = 0) -> None:
        require_role(sam, EverythingGenerator, "generator sam_everything")
        self.sam = sam
        self.settings = dict(
            points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area)
        check_settings("generator", ACCEPTS, self.settings)
        self.split = isinstance(sam, SplitEverythingGenerator)  # else only its one-call everything mode

    @property
    def grid(self) -> dict:
        """The settings :meth:`initialize` depends on: generators with equal grids can share a decoding."""
        return {k: self.settings[k] for k in GRID_SETTINGS}

    @property
    def pred_iou_thresh(self) -> float:
        return self.settings["pred_iou_thresh"]

    def _split_engine(self) -> SplitEverythingGenerator:
        if not self.split:
            raise TypeError(f"engine {self.sam.identity.get('model')!r} has no initialize/apply split; "
                            "call the generator instead")
        return self.sam  # type: ignore[return-value]

    @torch.no_grad()
    def initialize(self, image: np.ndarray, min_pred_iou_thresh: float | None = None) -> DecodedGrid:
        """The expensive part: SAM's encoder (memoised by the engine) and mask decoder for every crop of
        ``image`` (H, W, 3 uint8) and this grid.

        Args:
            image: the RGB image.
            min_pred_iou_thresh: the lowest ``pred_iou_thresh`` the result will be applied with
                (default: this generator's); masks below it are not kept. Low-res logits are 256 KB
                a mask: a lower floor costs memory, not decoder time.
        """
        floor = self.pred_iou_thresh if min_pred_iou_thresh is None else min_pred_iou_thresh
        return self._split_engine().initialize_everything(image, self.settings, floor)

    @torch.no_grad()
    def apply(self, decoded: DecodedGrid) -> Candidates:
        """The cheap part: this generator's thresholds, upscaling, stability filter, NMS and uncropping
        applied to ``decoded`` (from :meth:`initialize` with the same grid and a floor at or below
        this generator's ``pred_iou_thresh``). ``apply(initialize(image))`` is ``self(image)`` without the cache.

        Args:
            decoded: an :meth:`initialize` result, of any generator with an equal :attr:`grid`.
        """
        return self._split_engine().apply_everything(decoded, self.settings)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, decoded: Callable[[], DecodedGrid] | None = None) -> Candidates:
        """Candidates for ``image``: from the engine's proposals cache, else ``apply`` of a decoding.

        Args:
            image: the RGB image.
            decoded: supplies this image's :meth:`initialize` result when one may be shared (tuning);
                only called on a cache miss. Default: ``self.initialize(image)``.
        """
        if not self.split:  # e.g. SAM 2.1: its own everything mode in one call
            return self.sam.everything(image, **self.settings)
        decode = decoded or (lambda: self.initialize(image))
        return self._split_engine().cached_proposals(image, self.settings, lambda: self.apply(decode()))
