"""Method ``unet``: the supervised U-Net baseline, from a checkpoint written by ``salip-bench-train``."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from salip_bench.accepts import UNIT, check_settings
from salip_bench.engines.unet import load_checkpoint, resize_image
from salip_bench.masks import mask_box
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample

ACCEPTS = {"threshold": UNIT}  # a foreground probability


@METHODS.register("unet")
class UNetMethod:
    """A trained U-Net: predicts at its training size, resizes the foreground probability back to the
    image (bilinear) and thresholds it there, so the mask edge is not the staircase of an upscaled mask.

    checkpoint: ``unet.ckpt`` written by ``salip-bench-train`` (a missing file is an error that says
    how to produce it); threshold: foreground probability cut; device: ``auto`` (CUDA if available),
    ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, checkpoint: str, threshold: float = 0.5, device: str = "auto") -> None:
        check_settings("method", ACCEPTS, {"threshold": threshold})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.threshold = threshold
        self.net, self.image_size = load_checkpoint(checkpoint, self.device)

    @classmethod
    def prediction_files(cls, entry: Mapping) -> dict[str, Path]:
        """The checkpoint, by its config key: the resume fingerprint hashes its contents, so a
        retrained checkpoint at the same path is another configuration.

        Args:
            entry: this method's config entry (``cfg["method"]``).
        """
        checkpoint = entry.get("checkpoint")
        return {"checkpoint": Path(checkpoint).expanduser()} if isinstance(checkpoint, str) else {}

    @torch.inference_mode()
    def __call__(self, sample: Sample) -> Prediction:
        height, width = sample.image.shape[:2]
        x = resize_image(sample.image, self.image_size)[None].to(self.device)
        probability = torch.sigmoid(self.net(x))
        probability = F.interpolate(probability, size=(height, width), mode="bilinear", align_corners=False)
        mask = (probability[0, 0] > self.threshold).cpu().numpy()
        return Prediction(mask=mask, boxes=mask_box(mask))
