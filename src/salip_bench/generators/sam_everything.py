"""Generator ``sam_everything``: SAM's automatic ("segment everything") mask generation."""
from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (batch_iterator, batched_mask_to_box, calculate_stability_score,
                                       generate_crop_boxes, is_box_near_crop_edge, remove_small_regions,
                                       uncrop_boxes_xyxy)
from torchvision.ops.boxes import batched_nms, box_area

from salip_bench.engines.roles import EverythingGenerator, require_role
from salip_bench.models.sam import SamEngine, image_key
from salip_bench.models.sam_decoder import decode_points_iou_first
from salip_bench.registry import GENERATORS
from salip_bench.types import Candidates

PROPOSALS_VERSION = 1  # part of the proposals' cache key: bump when this algorithm's output changes


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
    """

    def generate(self, image: np.ndarray) -> list:
        raise NotImplementedError("use candidates(image)")

    def candidates(self, image: np.ndarray) -> Candidates:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [self._process_crop(image, box, layer, orig_size) for box, layer in zip(crop_boxes, layer_idxs)]
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

    def _process_crop(self, image: np.ndarray, crop_box: list[int], crop_layer_idx: int,
                      orig_size: tuple[int, ...]) -> dict:
        """Upstream's crop step; boxes in image coordinates, masks packed at crop size."""
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        self.predictor.set_image(cropped_im)
        points_for_image = self.point_grids[crop_layer_idx] * np.array(cropped_im.shape[:2])[None, ::-1]
        batches = [self._process_batch(points, cropped_im.shape[:2], crop_box, orig_size)
                   for (points,) in batch_iterator(self.points_per_batch, points_for_image)]
        self.predictor.reset_image()
        data = {k: torch.cat([b[k] for b in batches]) for k in ("iou_preds", "stability_score", "boxes")}
        masks = np.concatenate([b["masks"] for b in batches])
        keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                           iou_threshold=self.box_nms_thresh)  # duplicates within this crop
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["masks"] = masks[keep.cpu().numpy()]
        return data

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> dict:
        """Upstream's batch step, reordered so only masks that pass the predicted-IoU filter are
        upscaled to full resolution; masks come back bit-packed at crop size."""
        orig_h, orig_w = orig_size
        predictor, model = self.predictor, self.predictor.model
        points_t = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(points_t.shape[0], dtype=torch.int, device=predictor.device)
        low_res, iou_preds, _ = decode_points_iou_first(model, predictor.features, points_t[:, None, :],
                                                        labels[:, None], self.pred_iou_thresh)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        keep = iou_preds > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds, dtype=torch.bool)
        masks = model.postprocess_masks(low_res[keep][:, None], predictor.input_size, predictor.original_size)[:, 0]
        iou_preds = iou_preds[keep]
        stability = calculate_stability_score(masks, model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
            masks, iou_preds, stability = masks[stable], iou_preds[stable], stability[stable]
        masks = masks > model.mask_threshold
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
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

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Candidates:
        if not isinstance(self.sam, SamEngine):
            return self.sam.everything(image, **self.settings)
        cache = self.sam.cache if self.sam.cache is not None and self.sam.cache.proposals else None
        if cache is None:
            return self.amg.candidates(image)
        key = self.sam.predictor.cache_key("proposals", PROPOSALS_VERSION, self.settings, image_key(image))
        candidates = cache.load_candidates(key)
        if candidates is None:
            candidates = self.amg.candidates(image)
            cache.save_candidates(key, candidates)
        return candidates
