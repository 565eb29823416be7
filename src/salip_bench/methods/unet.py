"""Method ``unet``: the supervised U-Net baseline, from a checkpoint written by ``salip-bench-train``."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from salip_bench.engines.unet import load_checkpoint, resize_image
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(1, 4) XYXY box around the predicted foreground (none when it is empty), for overlays."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.zeros((0, 4), np.float32)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


@METHODS.register("unet")
class UNetMethod:
    """A trained U-Net: predicts at its training size, resizes the foreground probability back to the
    image (bilinear) and thresholds it there, so the mask edge is not the staircase of an upscaled mask.

    checkpoint: ``unet.ckpt`` written by ``salip-bench-train`` (a missing file is an error that says
    how to produce it); threshold: foreground probability cut; device: ``auto`` (CUDA if available),
    ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, checkpoint: str, threshold: float = 0.5, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.threshold = threshold
        self.net, self.image_size = load_checkpoint(checkpoint, self.device)

    @torch.inference_mode()
    def __call__(self, sample: Sample) -> Prediction:
        height, width = sample.image.shape[:2]
        x = resize_image(sample.image, self.image_size)[None].to(self.device)
        probability = torch.sigmoid(self.net(x))
        probability = F.interpolate(probability, size=(height, width), mode="bilinear", align_corners=False)
        mask = (probability[0, 0] > self.threshold).cpu().numpy()
        return Prediction(mask=mask, boxes=mask_box(mask))
