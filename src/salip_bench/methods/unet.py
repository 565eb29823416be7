"""Method ``unet``: the supervised U-Net baseline, from a checkpoint written by ``salip-bench-train``."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from salip_bench.accepts import UNIT, check_settings
from salip_bench.engines.unet import load_checkpoint, resize_image
from salip_bench.masks import mask_box
from salip_bench.qc.signals import MEAN_CONFIDENCE, MEAN_ENTROPY, UNET_SIGNALS, number
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

    qc_signals = UNET_SIGNALS  # from its probabilities (salip_bench.qc)
    default_qc = "unet_entropy"  # mean predictive entropy, the failure-detection literature's baseline

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
        probability = probability[0, 0].cpu().numpy()
        mask = probability > self.threshold
        return Prediction(mask=mask, boxes=mask_box(mask), info=probability_signals(probability, mask))


# Pixels below this probability are confidently background: they do not dilute the mean entropy.
UNCERTAIN_FLOOR = 0.05


def probability_signals(probability: np.ndarray, mask: np.ndarray) -> dict:
    """The U-Net's label-free signals: ``qc_mean_confidence``, the mean foreground probability over the
    predicted mask (an empty mask: the mean background probability, how sure it is that nothing is
    there), and ``qc_mean_entropy``, the mean binary entropy in bits over the predicted mask and every
    pixel at or above :data:`UNCERTAIN_FLOOR` (0 when there is none).

    Args:
        probability: (H, W) foreground probability at image resolution.
        mask: (H, W) bool, the prediction.
    """
    probability = probability.astype(np.float64)
    confidence = probability[mask].mean() if mask.any() else (1.0 - probability).mean()
    region = mask | (probability >= UNCERTAIN_FLOOR)
    p = np.clip(probability[region], 1e-12, 1 - 1e-12)
    entropy = float((-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean()) if len(p) else 0.0
    return {MEAN_CONFIDENCE: number(confidence), MEAN_ENTROPY: number(entropy)}
