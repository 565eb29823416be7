"""Generator ``sam_everything``: SAM's automatic ("segment everything") mask generation.

Split as micro-sam splits its automatic mask generator: :meth:`SamEverythingGenerator.initialize`
runs the expensive passes for one image and point grid (the encoder and mask decoder of every
crop), :meth:`SamEverythingGenerator.apply` the cheap settings acting on their outputs (the
quality thresholds, upscaling of the masks that pass them, stability filter, NMS, uncropping).
Tuning decodes each image and grid once and applies every trial's thresholds to it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (batch_iterator, batched_mask_to_box, calculate_stability_score,
                                       generate_crop_boxes, is_box_near_crop_edge, remove_small_regions,
                                       uncrop_boxes_xyxy)
from torchvision.ops.boxes import batched_nms, box_area

from salip_bench.engines.roles import EverythingGenerator, require_role
from salip_bench.engines.sam_v1 import SamEngine, image_key
from salip_bench.engines.sam_decoder import decode_points_iou_first
from salip_bench.registry import GENERATORS
from salip_bench.types import Candidates

PROPOSALS_VERSION = 1  # part of the proposals' cache key: bump when this algorithm's output changes
# The settings the encoder and decoder passes depend on; every other setting acts on their outputs.
GRID_SETTINGS = ("points_per_side", "points_per_batch", "crop_n_layers", "crop_overlap_ratio",
                 "crop_n_points_downscale_factor")


@dataclass
class DecodedCrop:
    """One crop's decoder outputs. box: XYXY in the image; input_size / original_size: the
    predictor's resized and original crop sizes (for upscaling); batches: per decoder batch, the
    low-res logits (M, 4h, 4w) and predicted IoUs (M,) of the masks kept, in upstream's order."""

    box: list[int]
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    batches: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecodedGrid:
    """What :meth:`SamEverythingGenerator.initialize` keeps of one image and grid: every mask whose
    predicted IoU is above ``min_pred_iou_thresh`` (<= 0: every mask), per crop."""

    image_size: tuple[int, int]
    min_pred_iou_thresh: float
    crops: list[DecodedCrop]
    grid: str = ""  # the grid settings it was decoded with (JSON), checked by apply


def _floor(pred_iou_thresh: float) -> float:
    """The predicted IoU a threshold needs (a threshold <= 0 keeps every mask)."""
    return pred_iou_thresh if pred_iou_thresh > 0.0 else -np.inf


class _FastAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Upstream's generator without its thrown-away work; its masks, scores and their order are
    bit-identical to upstream ``generate(...)`` with ``output_mode="binary_mask"``
    (tests/test_sam_equivalence.py). ``candidates`` replaces ``generate``:

    - the mask decoder shares the image tokens' first-block work between prompts and upscales only
      prompts with a mask that passes the predicted-IoU filter (``models/sam_decoder.py``), and only
      those masks are then upscaled to full resolution; upstream upscales every mask, twice, first;
    - masks stay binary, bit-packed at crop size, until both NMS passes have decided which are
      kept; upstream pads every surviving mask to the full image, run-length encodes it and
      decodes the kept ones back (for noisy masks the RLE round trip costs more than the decoder);
    - batches and crops are concatenated once instead of through ``MaskData.cat``'s deep copies;
    - "no mask survived" is a normal outcome (upstream raises IndexError when crop_n_layers >= 1).

    ``initialize`` (encoder and decoder) and ``apply`` (everything after) are separate so that one
    decoding serves any threshold at or above the one it was decoded for: a kept prompt's logits
    do not depend on which other prompts are kept (``models/sam_decoder.py``).
    """

    def generate(self, image: np.ndarray) -> list:
        raise NotImplementedError("use candidates(image)")

    def candidates(self, image: np.ndarray) -> Candidates:
        return self.apply(self.initialize(image, self.pred_iou_thresh))

    def initialize(self, image: np.ndarray, min_pred_iou_thresh: float) -> DecodedGrid:
        """Encoder and decoder passes of every crop: each batch's low-res logits and predicted IoUs of
        the masks above ``min_pred_iou_thresh`` (<= 0: all of them)."""
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [self._decode_crop(image, box, layer, min_pred_iou_thresh)
                 for box, layer in zip(crop_boxes, layer_idxs)]
        return DecodedGrid(orig_size, min_pred_iou_thresh, crops)

    def apply(self, decoded: DecodedGrid) -> Candidates:
        """The thresholds, upscaling of the masks that pass them, stability filter, NMS and uncropping."""
        if _floor(decoded.min_pred_iou_thresh) > _floor(self.pred_iou_thresh):
            raise ValueError(f"pred_iou_thresh {self.pred_iou_thresh} is below the {decoded.min_pred_iou_thresh} "
                             "the grid was decoded for: masks it needs were not kept")
        orig_size = decoded.image_size
        crop_boxes = [crop.box for crop in decoded.crops]
        crops = [self._process_crop(crop, orig_size) for crop in decoded.crops]
        data = {k: torch.cat([c[k] for c in crops]) for k in ("iou_preds", "stability_score", "boxes")}
        # Where each row's packed mask lives: (crop, row within that crop).
        crop_index = np.concatenate([np.full(len(c["masks"]), i) for i, c in enumerate(crops)])
        row = np.concatenate([np.arange(len(c["masks"])) for c in crops])
        if len(crop_boxes) > 1 and len(data["boxes"]) > 0:
            # Remove duplicates between crops, preferring masks from smaller crops, as upstream does.
            scores = 1 / box_area(torch.tensor(crop_boxes)[torch.from_numpy(crop_index)])
            keep = batched_nms(data["boxes"].float(), scores.to(data["boxes"].device),
                               torch.zeros(len(data["boxes"])), iou_threshold=self.crop_nms_thresh)
            data = {k: v[keep] for k, v in data.items()}
            crop_index, row = crop_index[keep.cpu().numpy()], row[keep.cpu().numpy()]
        data = {k: v.cpu().numpy() for k, v in data.items()}
        masks = np.zeros((len(row), *orig_size), bool)
        for i, (c, r) in enumerate(zip(crop_index, row)):
            x0, y0, x1, y1 = crop_boxes[c]  # uncrop: the crop's mask, zero-padded to the image
            masks[i, y0:y1, x0:x1] = np.unpackbits(crops[c]["masks"][r], count=(y1 - y0) * (x1 - x0)).reshape(
                y1 - y0, x1 - x0)
        if self.min_mask_region_area > 0 and len(masks):
            masks, boxes, keep = self._remove_small_regions(masks)
            data = {k: v[keep] for k, v in data.items()}
        else:
            boxes = data["boxes"]
        areas = masks.sum(axis=(1, 2)).astype(np.int64)
        boxes = np.where(areas[:, None] > 0, boxes, 0)  # the tight box of an empty mask is zeros, not its crop's corner
        return Candidates(masks=masks, boxes=boxes.astype(np.float32), areas=areas,
                          predicted_iou=data["iou_preds"].astype(np.float32),
                          stability_score=data["stability_score"].astype(np.float32))

    def _decode_crop(self, image: np.ndarray, crop_box: list[int], crop_layer_idx: int,
                     min_pred_iou_thresh: float) -> DecodedCrop:
        """One crop's encoder pass and its batches' decoder passes (upstream's batching)."""
        x0, y0, x1, y1 = crop_box
        whole = [x0, y0, x1, y1] == [0, 0, image.shape[1], image.shape[0]]
        cropped_im = image if whole else image[y0:y1, x0:x1, :]  # the image itself: its content key is memoised
        predictor = self.predictor
        predictor.set_image(cropped_im)
        points_for_image = self.point_grids[crop_layer_idx] * np.array(cropped_im.shape[:2])[None, ::-1]
        batches = []
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            points_t = torch.as_tensor(predictor.transform.apply_coords(points, cropped_im.shape[:2]),
                                       device=predictor.device)
            labels = torch.ones(points_t.shape[0], dtype=torch.int, device=predictor.device)
            low_res, iou_preds, _ = decode_points_iou_first(predictor.model, predictor.features, points_t[:, None, :],
                                                            labels[:, None], min_pred_iou_thresh)
            low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
            if min_pred_iou_thresh > 0.0:  # masks no threshold of this grid's users can pass: dropped now
                passing = iou_preds > min_pred_iou_thresh
                low_res, iou_preds = low_res[passing], iou_preds[passing]
            batches.append((low_res, iou_preds))
        crop = DecodedCrop(list(crop_box), predictor.input_size, predictor.original_size, batches)
        predictor.reset_image()
        return crop

    def _process_crop(self, crop: DecodedCrop, orig_size: tuple[int, ...]) -> dict:
        """Upstream's crop step after decoding; boxes in image coordinates, masks packed at crop size."""
        batches = [self._process_batch(low_res, iou_preds, crop, orig_size) for low_res, iou_preds in crop.batches]
        data = {k: torch.cat([b[k] for b in batches]) for k in ("iou_preds", "stability_score", "boxes")}
        masks = np.concatenate([b["masks"] for b in batches])
        keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                           iou_threshold=self.box_nms_thresh)  # duplicates within this crop
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop.box)
        data["masks"] = masks[keep.cpu().numpy()]
        return data

    def _process_batch(self, low_res: torch.Tensor, iou_preds: torch.Tensor, crop: DecodedCrop,
                       orig_size: tuple[int, ...]) -> dict:
        """Upstream's batch step, reordered so only masks that pass the predicted-IoU filter are
        upscaled to full resolution; masks come back bit-packed at crop size."""
        orig_h, orig_w = orig_size
        model = self.predictor.model
        keep = iou_preds > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds, dtype=torch.bool)
        masks = model.postprocess_masks(low_res[keep][:, None], crop.input_size, crop.original_size)[:, 0]
        iou_preds = iou_preds[keep]
        stability = calculate_stability_score(masks, model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
            masks, iou_preds, stability = masks[stable], iou_preds[stable], stability[stable]
        masks = masks > model.mask_threshold
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop.box, [0, 0, orig_w, orig_h])
        masks, iou_preds, stability, boxes = masks[inside], iou_preds[inside], stability[inside], boxes[inside]
        packed = np.packbits(masks.flatten(1).cpu().numpy(), axis=1)
        return {"iou_preds": iou_preds, "stability_score": stability, "boxes": boxes, "masks": packed}

    def _remove_small_regions(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upstream's ``postprocess_small_regions`` on binary masks: fill small holes, drop small
        islands, then NMS preferring unchanged masks. Returns masks, their boxes and the kept rows."""
        cleaned, unchanged = [], []
        for mask in masks:
            mask, holes = remove_small_regions(mask, self.min_mask_region_area, mode="holes")
            mask, islands = remove_small_regions(mask, self.min_mask_region_area, mode="islands")
            cleaned.append(mask)
            unchanged.append(float(not holes and not islands))
        cleaned_t = torch.as_tensor(np.stack(cleaned))
        boxes = batched_mask_to_box(cleaned_t)
        keep = batched_nms(boxes.float(), torch.as_tensor(unchanged), torch.zeros(len(boxes)),
                           iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh)).numpy()
        return cleaned_t.numpy()[keep], boxes.numpy()[keep], keep


@GENERATORS.register("sam_everything")
class SamEverythingGenerator:
    """SAM prompted with a regular grid of points; every upstream ``SamAutomaticMaskGenerator`` knob.

    points_per_side: grid side (points = side²); points_per_batch: points decoded together;
    pred_iou_thresh / stability_score_thresh / stability_score_offset: quality filters;
    box_nms_thresh: NMS IoU within a crop; crop_n_layers / crop_nms_thresh / crop_overlap_ratio /
    crop_n_points_downscale_factor: multi-crop processing (0 layers = the full image only);
    min_mask_region_area: remove small holes/islands (pixels, 0 = off, needs OpenCV).
    ``sam`` is injected at run time; its memoising predictor lets the refiner reuse the embedding,
    and its cache (if any) keeps the proposals on disk, keyed by image, model and every setting.
    """

    def __init__(self, sam: SamEngine | EverythingGenerator, points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, min_mask_region_area: int = 0) -> None:
        self.sam = sam
        self.settings = dict(
            points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area)
        if not isinstance(sam, SamEngine):  # another engine (SAM 2.1): its own everything mode
            require_role(sam, EverythingGenerator, "generator sam_everything", "model")
            return
        self.amg = _FastAutomaticMaskGenerator(sam.sam, **self.settings)
        self.amg.predictor = sam.predictor  # share the memoised embeddings with the refiner

    @property
    def grid(self) -> dict:
        """The settings :meth:`initialize` depends on: generators with equal grids can share a decoding."""
        return {k: self.settings[k] for k in GRID_SETTINGS}

    @property
    def pred_iou_thresh(self) -> float:
        return self.settings["pred_iou_thresh"]

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
        decoded = self.amg.initialize(image, floor)
        decoded.grid = json.dumps(self.grid, sort_keys=True)
        return decoded

    @torch.no_grad()
    def apply(self, decoded: DecodedGrid) -> Candidates:
        """The cheap part: this generator's thresholds, upscaling, stability filter, NMS and uncropping
        applied to ``decoded`` (from :meth:`initialize` with the same grid and a floor at or below
        this generator's ``pred_iou_thresh``). ``apply(initialize(image))`` is ``self(image)`` without the cache.

        Args:
            decoded: an :meth:`initialize` result, of any generator with an equal :attr:`grid`.
        """
        if decoded.grid and decoded.grid != json.dumps(self.grid, sort_keys=True):
            raise ValueError(f"decoded with grid {decoded.grid}, applied with {self.grid}")
        return self.amg.apply(decoded)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, decoded: Callable[[], DecodedGrid] | None = None) -> Candidates:
        """Candidates for ``image``: from the proposals cache, else ``apply`` of a decoding.

        Args:
            image: the RGB image.
            decoded: supplies this image's :meth:`initialize` result when one may be shared (tuning);
                only called on a cache miss. Default: ``self.initialize(image)``.
        """
        if not isinstance(self.sam, SamEngine):  # another SAM family: its own everything mode
            return self.sam.everything(image, **self.settings)
        decode = decoded or (lambda: self.initialize(image))
        cache = self.sam.cache if self.sam.cache is not None and self.sam.cache.proposals else None
        if cache is None:
            return self.apply(decode())
        key = self.sam.predictor.cache_key("proposals", PROPOSALS_VERSION, self.settings, image_key(image))
        candidates = cache.load_candidates(key)
        if candidates is None:
            candidates = self.apply(decode())
            cache.save_candidates(key, candidates)
        return candidates
