"""SAM v1's point-grid ("segment everything") mode, composed from segment_anything's public parts.

Its masks, scores and their order are bit-identical to upstream ``SamAutomaticMaskGenerator(...)
.generate(image)`` with ``output_mode="binary_mask"`` (tests/test_sam_equivalence.py): the crops,
point grids, stability scores, box and NMS steps are upstream's own functions
(``segment_anything.utils.amg``, torchvision's ``batched_nms``) on the same values in the same
order. Three things are done differently, and faster:

- the mask decoder shares the image tokens' first-block work between prompts and upscales only
  prompts with a mask that passes the predicted-IoU filter (``engines/sam_decoder.py``), and only
  those masks are then upscaled to full resolution; upstream upscales every mask, twice, first;
- masks stay binary, bit-packed at crop size, until both NMS passes have decided which are kept;
  upstream pads every surviving mask to the full image, run-length encodes it and decodes the kept
  ones back (for noisy masks the RLE round trip costs more than the decoder);
- batches and crops are concatenated once instead of through ``MaskData.cat``'s deep copies, and
  "no mask survived" is a normal outcome (upstream raises IndexError when crop_n_layers >= 1).

Split as micro-sam splits its generator: :func:`decode_grid` runs the expensive passes (encoder
and mask decoder of every crop), :func:`apply_grid` the cheap settings acting on their outputs. One
decoding serves any ``pred_iou_thresh`` at or above the one it was decoded for: a kept prompt's
logits do not depend on which other prompts are kept (``engines/sam_decoder.py``). The decoding also
keeps its masks once upscaled and binarised (per stability offset), so applying further settings
to it (tuning's trials) costs only the filters and NMS.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batch_iterator,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
)
from torchvision.ops.boxes import batched_nms, box_area

from salip_bench.engines.sam_decoder import decode_points_iou_first
from salip_bench.types import Candidates

PROPOSALS_VERSION = 1  # part of the proposals' cache key: bump when this algorithm's output changes
# The settings the encoder and decoder passes depend on; every other setting acts on their outputs.
GRID_SETTINGS = ("points_per_side", "points_per_batch", "crop_n_layers", "crop_overlap_ratio",
                 "crop_n_points_downscale_factor")


@dataclass(frozen=True)
class EverythingSettings:
    """Upstream ``SamAutomaticMaskGenerator``'s knobs, with its defaults (a test keeps them equal).

    Args:
        points_per_side: grid side (points = side²).
        points_per_batch: points decoded together.
        pred_iou_thresh: keep masks whose predicted IoU is above it (<= 0: all).
        stability_score_thresh: keep masks at least this stable (<= 0: all).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: NMS IoU within a crop.
        crop_n_layers: crop layers beyond the full image (0: the full image only).
        crop_nms_thresh: NMS IoU between crops.
        crop_overlap_ratio: overlap of the first layer's crops.
        crop_n_points_downscale_factor: points per side shrink by this factor per layer.
        min_mask_region_area: remove holes and islands smaller than this (pixels; 0: off; OpenCV).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def grid_json(self) -> str:
        """The settings :func:`decode_grid` depends on, as the JSON a :class:`DecodedGrid` records."""
        return json.dumps({k: getattr(self, k) for k in GRID_SETTINGS}, sort_keys=True)


@dataclass
class UpscaledBatch:
    """What one decoder batch's masks become at crop size, before any setting but the stability
    offset acts on them: per mask its stability score, its binary mask's box (in the crop), whether
    that box stays off the crop's inner edges, and the binary mask bit-packed; (M, ...) rows in the
    batch's order."""

    stability_score: torch.Tensor
    boxes: torch.Tensor
    inside: torch.Tensor
    masks: np.ndarray


@dataclass
class DecodedCrop:
    """One crop's decoder outputs. box: XYXY in the image; input_size / original_size: the
    predictor's resized and original crop sizes (for upscaling); batches: per decoder batch, the
    low-res logits (M, 4h, 4w) and predicted IoUs (M,) of the masks kept, in upstream's order.
    upscaled: per (stability offset, batch) the :class:`UpscaledBatch` of every kept mask, filled by
    the first :func:`apply_grid` that needs it, so that further settings applied to the same
    decoding (tuning trials) upscale nothing again."""

    box: list[int]
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    upscaled: dict[tuple[float, int], UpscaledBatch] = field(default_factory=dict, repr=False)


@dataclass
class DecodedGrid:
    """What :func:`decode_grid` keeps of one image and grid: every mask whose predicted IoU is
    above ``min_pred_iou_thresh`` (<= 0: every mask), per crop."""

    image_size: tuple[int, int]
    min_pred_iou_thresh: float
    crops: list[DecodedCrop]
    grid: str = ""  # the grid settings it was decoded with (JSON), checked by apply_grid


def _floor(pred_iou_thresh: float) -> float:
    """The predicted IoU a threshold needs (a threshold <= 0 keeps every mask)."""
    return pred_iou_thresh if pred_iou_thresh > 0.0 else -np.inf


def decode_grid(prepared: Callable[[list[int]], SamPredictor], image_size: tuple[int, int],
                settings: EverythingSettings, min_pred_iou_thresh: float) -> DecodedGrid:
    """Encoder and decoder passes of every crop (upstream's crops, grids and batches).

    Args:
        prepared: a crop box (XYXY in the image) -> a predictor holding that crop's embedding.
        image_size: (H, W) of the image.
        settings: the grid settings (the others are not read).
        min_pred_iou_thresh: keep the masks whose predicted IoU is above it (<= 0: all of them).
    """
    crop_boxes, layers = generate_crop_boxes(image_size, settings.crop_n_layers, settings.crop_overlap_ratio)
    grids = build_all_layer_point_grids(settings.points_per_side, settings.crop_n_layers,
                                        settings.crop_n_points_downscale_factor)
    crops = [_decode_crop(prepared(box), box, grids[layer], settings.points_per_batch, min_pred_iou_thresh)
             for box, layer in zip(crop_boxes, layers)]
    return DecodedGrid(image_size, min_pred_iou_thresh, crops, settings.grid_json())


def _decode_crop(predictor: SamPredictor, crop_box: list[int], grid: np.ndarray, points_per_batch: int,
                 min_pred_iou_thresh: float) -> DecodedCrop:
    """One crop's decoder passes, batch by batch; ``grid``: the layer's points in [0, 1]."""
    x0, y0, x1, y1 = crop_box
    crop_size = (y1 - y0, x1 - x0)
    batches = []
    for (points,) in batch_iterator(points_per_batch, grid * np.array(crop_size)[None, ::-1]):
        points_t = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        labels = torch.ones(points_t.shape[0], dtype=torch.int, device=predictor.device)
        low_res, iou_preds, _ = decode_points_iou_first(predictor.model, predictor.features, points_t[:, None, :],
                                                        labels[:, None], min_pred_iou_thresh)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        if min_pred_iou_thresh > 0.0:  # masks no threshold of this grid's users can pass: dropped now
            passing = iou_preds > min_pred_iou_thresh
            low_res, iou_preds = low_res[passing], iou_preds[passing]
        batches.append((low_res, iou_preds))
    return DecodedCrop(list(crop_box), predictor.input_size, predictor.original_size, batches)


def apply_grid(model: Sam, decoded: DecodedGrid, settings: EverythingSettings) -> Candidates:
    """The thresholds, upscaling of the masks that pass them, stability filter, NMS and uncropping.

    Args:
        model: the SAM that decoded ``decoded`` (its mask post-processing and threshold).
        decoded: a :func:`decode_grid` result with ``settings``' grid and a floor at or below
            ``settings.pred_iou_thresh``.
        settings: every knob.
    """
    if decoded.grid and decoded.grid != settings.grid_json():
        raise ValueError(f"decoded with grid {decoded.grid}, applied with {settings.grid_json()}")
    if _floor(decoded.min_pred_iou_thresh) > _floor(settings.pred_iou_thresh):
        raise ValueError(f"pred_iou_thresh {settings.pred_iou_thresh} is below the {decoded.min_pred_iou_thresh} "
                         "the grid was decoded for: masks it needs were not kept")
    orig_size = decoded.image_size
    crop_boxes = [crop.box for crop in decoded.crops]
    crops = [_process_crop(model, crop, orig_size, settings) for crop in decoded.crops]
    data = {k: torch.cat([c[k] for c in crops]) for k in ("iou_preds", "stability_score", "boxes")}
    # Where each row's packed mask lives: (crop, row within that crop).
    crop_index = np.concatenate([np.full(len(c["masks"]), i) for i, c in enumerate(crops)])
    row = np.concatenate([np.arange(len(c["masks"])) for c in crops])
    if len(crop_boxes) > 1 and len(data["boxes"]) > 0:
        # Remove duplicates between crops, preferring masks from smaller crops, as upstream does.
        scores = 1 / box_area(torch.tensor(crop_boxes)[torch.from_numpy(crop_index)])
        keep = batched_nms(data["boxes"].float(), scores.to(data["boxes"].device),
                           torch.zeros(len(data["boxes"])), iou_threshold=settings.crop_nms_thresh)
        data = {k: v[keep] for k, v in data.items()}
        crop_index, row = crop_index[keep.cpu().numpy()], row[keep.cpu().numpy()]
    data = {k: v.cpu().numpy() for k, v in data.items()}
    masks = np.zeros((len(row), *orig_size), bool)
    for i, (c, r) in enumerate(zip(crop_index, row)):
        x0, y0, x1, y1 = crop_boxes[c]  # uncrop: the crop's mask, zero-padded to the image
        masks[i, y0:y1, x0:x1] = np.unpackbits(crops[c]["masks"][r], count=(y1 - y0) * (x1 - x0)).reshape(
            y1 - y0, x1 - x0)
    if settings.min_mask_region_area > 0 and len(masks):
        masks, boxes, keep = _remove_small_regions(masks, settings)
        data = {k: v[keep] for k, v in data.items()}
    else:
        boxes = data["boxes"]
    areas = masks.sum(axis=(1, 2)).astype(np.int64)
    boxes = np.where(areas[:, None] > 0, boxes, 0)  # the tight box of an empty mask is zeros, not its crop's corner
    return Candidates(masks=masks, boxes=boxes.astype(np.float32), areas=areas,
                      predicted_iou=data["iou_preds"].astype(np.float32),
                      stability_score=data["stability_score"].astype(np.float32))


def _process_crop(model: Sam, crop: DecodedCrop, orig_size: tuple[int, ...], settings: EverythingSettings) -> dict:
    """Upstream's crop step after decoding; boxes in image coordinates, masks packed at crop size."""
    batches = [_process_batch(_upscaled(model, crop, index, orig_size, settings.stability_score_offset),
                              iou_preds, settings) for index, (_, iou_preds) in enumerate(crop.batches)]
    data = {k: torch.cat([b[k] for b in batches]) for k in ("iou_preds", "stability_score", "boxes")}
    masks = np.concatenate([b["masks"] for b in batches])
    keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                       iou_threshold=settings.box_nms_thresh)  # duplicates within this crop
    data = {k: v[keep] for k, v in data.items()}
    data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop.box)
    data["masks"] = masks[keep.cpu().numpy()]
    return data


def _upscaled(model: Sam, crop: DecodedCrop, index: int, orig_size: tuple[int, ...], offset: float) -> UpscaledBatch:
    """Batch ``index`` of ``crop`` upscaled to crop size, binarised and scored (memoised on the crop).

    Every mask the decoding kept is upscaled, as the lowest threshold it was decoded for needs; a
    mask's values do not depend on the others in its batch, so a threshold applied afterwards
    selects exactly the rows upstream's filter-then-upscale order computes."""
    memo_key = (float(offset), index)
    if memo_key not in crop.upscaled:
        low_res, _ = crop.batches[index]
        logits = model.postprocess_masks(low_res[:, None], crop.input_size, crop.original_size)[:, 0]
        stability = calculate_stability_score(logits, model.mask_threshold, offset)
        masks = logits > model.mask_threshold
        del logits  # full-resolution float logits: only their binary masks are kept
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop.box, [0, 0, orig_size[1], orig_size[0]])
        packed = np.packbits(masks.flatten(1).cpu().numpy(), axis=1)
        crop.upscaled[memo_key] = UpscaledBatch(stability, boxes, inside, packed)
    return crop.upscaled[memo_key]


def _process_batch(upscaled: UpscaledBatch, iou_preds: torch.Tensor, settings: EverythingSettings) -> dict:
    """Upstream's batch step on the upscaled masks: the predicted-IoU and stability filters, then
    the crop-edge filter; masks come back bit-packed at crop size."""
    keep = torch.ones_like(iou_preds, dtype=torch.bool)
    if settings.pred_iou_thresh > 0.0:
        keep &= iou_preds > settings.pred_iou_thresh
    if settings.stability_score_thresh > 0.0:
        keep &= upscaled.stability_score >= settings.stability_score_thresh
    keep &= upscaled.inside
    return {"iou_preds": iou_preds[keep], "stability_score": upscaled.stability_score[keep],
            "boxes": upscaled.boxes[keep], "masks": upscaled.masks[keep.cpu().numpy()]}


def _remove_small_regions(masks: np.ndarray, settings: EverythingSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream's ``postprocess_small_regions`` on binary masks: fill small holes, drop small
    islands, then NMS preferring unchanged masks. Returns masks, their boxes and the kept rows."""
    cleaned, unchanged = [], []
    for mask in masks:
        mask, holes = remove_small_regions(mask, settings.min_mask_region_area, mode="holes")
        mask, islands = remove_small_regions(mask, settings.min_mask_region_area, mode="islands")
        cleaned.append(mask)
        unchanged.append(float(not holes and not islands))
    cleaned_t = torch.as_tensor(np.stack(cleaned))
    boxes = batched_mask_to_box(cleaned_t)
    keep = batched_nms(boxes.float(), torch.as_tensor(unchanged), torch.zeros(len(boxes)),
                       iou_threshold=max(settings.box_nms_thresh, settings.crop_nms_thresh)).numpy()
    return cleaned_t.numpy()[keep], boxes.numpy()[keep], keep
