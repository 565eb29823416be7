"""Generator ``sam_everything``: SAM's automatic ("segment everything") mask generation."""
from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (MaskData, batched_mask_to_box, calculate_stability_score, generate_crop_boxes,
                                       is_box_near_crop_edge, mask_to_rle_pytorch, uncrop_masks)
from torchvision.ops.boxes import batched_nms, box_area

from salip_bench.models.sam import SamEngine
from salip_bench.registry import GENERATORS
from salip_bench.types import Candidates


class _SafeAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Upstream generator that treats "no mask survived" as a normal outcome and skips thrown-away work.

    Upstream's ``_generate_masks`` calls ``box_area`` on the (empty) crop boxes of an empty result
    when ``crop_n_layers >= 1`` and raises ``IndexError``; everything else is unchanged.
    """

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data: MaskData | None = None
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            crop_data = self._process_crop(image, crop_box, layer_idx, orig_size)
            if data is None:
                data = crop_data
            else:
                data.cat(crop_data)
        if len(crop_boxes) > 1 and len(data["crop_boxes"]) > 0:
            # Prefer masks from smaller crops, as upstream does.
            scores = 1 / box_area(data["crop_boxes"])
            scores = scores.to(data["boxes"].device)
            keep = batched_nms(data["boxes"].float(), scores,
                               torch.zeros_like(data["boxes"][:, 0]), iou_threshold=self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        return data

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> MaskData:
        """Upstream's batch step, reordered so only masks that pass the predicted-IoU filter are
        upscaled to full resolution. Upscaling is per mask, so the survivors are bit-identical to
        upstream's; on CPU it skips most of the decoder's post-processing cost."""
        orig_h, orig_w = orig_size
        predictor, model = self.predictor, self.predictor.model
        points_t = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(points_t.shape[0], dtype=torch.int, device=predictor.device)
        sparse, dense = model.prompt_encoder(points=(points_t[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_res, iou_preds = model.mask_decoder(image_embeddings=predictor.features,
                                                image_pe=model.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=True)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        point_rows = torch.as_tensor(points.repeat(low_res.shape[0] // points.shape[0], axis=0))
        keep = iou_preds > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds, dtype=torch.bool)
        masks = model.postprocess_masks(low_res[keep][:, None], predictor.input_size, predictor.original_size)[:, 0]
        data = MaskData(masks=masks, iou_preds=iou_preds[keep], points=point_rows[keep.cpu()])
        data["stability_score"] = calculate_stability_score(data["masks"], model.mask_threshold,
                                                            self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if torch.any(near_edge):
            data.filter(~near_edge)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        return data


@GENERATORS.register("sam_everything")
class SamEverythingGenerator:
    """SAM prompted with a regular grid of points; every upstream ``SamAutomaticMaskGenerator`` knob.

    points_per_side: grid side (points = side²); points_per_batch: points decoded together;
    pred_iou_thresh / stability_score_thresh / stability_score_offset: quality filters;
    box_nms_thresh: NMS IoU within a crop; crop_n_layers / crop_nms_thresh / crop_overlap_ratio /
    crop_n_points_downscale_factor: multi-crop processing (0 layers = the full image only);
    min_mask_region_area: remove small holes/islands (pixels, 0 = off, needs OpenCV).
    ``sam`` is injected at run time; its memoising predictor lets the refiner reuse the embedding.
    """

    def __init__(self, sam: SamEngine, points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, min_mask_region_area: int = 0) -> None:
        self.sam = sam
        self.amg = _SafeAutomaticMaskGenerator(
            sam.sam, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, output_mode="binary_mask")
        self.amg.predictor = sam.predictor  # share the memoised embeddings with the refiner

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Candidates:
        records = self.amg.generate(image)
        height, width = image.shape[:2]
        if not records:
            return Candidates.empty(height, width)
        masks = np.stack([r["segmentation"] for r in records]).astype(bool)
        boxes = batched_mask_to_box(torch.from_numpy(masks)).numpy().astype(np.float32)
        return Candidates(masks=masks, boxes=boxes, areas=masks.sum(axis=(1, 2)).astype(np.int64),
                          predicted_iou=np.array([r["predicted_iou"] for r in records], np.float32),
                          stability_score=np.array([r["stability_score"] for r in records], np.float32))
