"""The supervised U-Net baseline: network, input preparation, augmentation, training module, checkpoint.

Training (``salip-bench-train``) and inference (method ``unet``) both prepare images with
:func:`resize_image`, so the network sees the same input at both ends.
"""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from salip_bench.engines.weights import WeightsNotFoundError, checkpoint_errors
from salip_bench.metrics import dice_iou_from_counts
from salip_bench.storage.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "salip-bench-unet/1"
ARCH_KEYS = ("channels", "strides", "num_res_units", "norm", "dropout")
TRAIN_HINT = ("train one with `salip-bench-train dataset=folder dataset.root=<labelled folder> output_dir=<dir>`, "
              "which writes <dir>/unet.ckpt, then pass method.checkpoint=<dir>/unet.ckpt")


def build_unet(channels: list[int], strides: list[int], num_res_units: int, norm: str = "instance",
               dropout: float = 0.0) -> UNet:
    """2D MONAI U-Net: RGB input (3 channels), one foreground logit."""
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=list(channels), strides=list(strides),
                num_res_units=num_res_units, norm=norm, dropout=dropout)


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, size, size) float in [0, 1]; antialiased, since images shrink ~3x."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool → (1, size, size) bool: area-weighted, then cut at half coverage."""
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0] > 0.5


def augment(images: torch.Tensor, masks: torch.Tensor, max_rotation: float = 20.0,
            scale: tuple[float, float] = (0.85, 1.15), shift: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip, rotation (degrees), zoom and shift (fraction of the side) — one affine
    warp per image, applied to its mask too — then gamma and contrast jitter of the image.

    Done on the whole batch with ``grid_sample`` rather than per-sample transforms: on a 2-core CPU
    a per-sample pipeline in DataLoader workers would compete with the network for the same cores.
    """
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(low, high)

    angle = torch.deg2rad(uniform(-max_rotation, max_rotation))
    zoom = uniform(*scale)
    flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates in [-1, 1]; negating column 0 mirrors x.
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(-2 * shift, 2 * shift)], 1),
                         torch.stack([sin * flip, cos, uniform(-2 * shift, 2 * shift)], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Zero padding matches the black background around the ultrasound fan / X-ray field.
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
    gamma = torch.exp(uniform(-0.4, 0.4)).view(n, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    return (images.clamp(0, 1) ** gamma * contrast).clamp(0, 1), masks


class UNetModule(L.LightningModule):
    """U-Net trained with Dice + BCE (MONAI ``DiceCELoss``); keeps the weights of the epoch with the
    best mean validation Dice (``best_state``, ``best_dice``, ``best_epoch``).

    arch: :func:`build_unet` kwargs; lr / weight_decay: AdamW, under a one-cycle schedule over the
    whole run (on a short CPU budget a warm-up and a long anneal converge faster than a constant
    rate); augment: apply :func:`augment` to each training batch.
    """

    def __init__(self, arch: dict, lr: float, weight_decay: float, augment: bool) -> None:
        super().__init__()
        self.net = build_unet(**arch)
        self.lr, self.weight_decay, self.augment = lr, weight_decay, augment
        self.loss = DiceCELoss(sigmoid=True)
        self.best_dice: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_dice: float | None = None
        self._losses: list[torch.Tensor] = []
        self._val_dices: list[float] = []
        self._epoch_start = time.perf_counter()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._losses = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        if self.augment:
            images, masks = augment(images, masks)
        loss = self.loss(self.net(images), masks.float())
        self._losses.append(loss.detach())
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        predicted = self.net(images) > 0  # logit > 0 ⇔ probability > 0.5, the method's default threshold
        for pred, target in zip(predicted, masks):
            tp = int((pred & target).sum())
            self._val_dices.append(dice_iou_from_counts(tp, int(pred.sum()) - tp, int(target.sum()) - tp)[0])

    def on_validation_epoch_end(self) -> None:
        self.val_dice = float(np.mean(self._val_dices)) if self._val_dices else None
        self._val_dices = []
        if self.val_dice is not None and (self.best_dice is None or self.val_dice > self.best_dice):
            self.best_dice, self.best_epoch = self.val_dice, self.current_epoch + 1  # 1-based, as logged
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def on_train_epoch_end(self) -> None:  # runs after the epoch's validation
        loss = torch.stack(self._losses).mean().item() if self._losses else float("nan")
        val = ("" if self.val_dice is None
               else f" val_dice={self.val_dice:.4f} (best {self.best_dice:.4f} @ {self.best_epoch})")
        log.info("epoch %d/%d loss=%.4f%s %.1fs", self.current_epoch + 1, self.trainer.max_epochs, loss, val,
                 time.perf_counter() - self._epoch_start)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr,
                                                       total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], arch: dict, image_size: int,
                    info: dict) -> None:
    """Tensors and plain Python values only, so that ``torch.load(weights_only=True)`` reads it."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "arch": {k: arch[k] for k in ARCH_KEYS}, "image_size": int(image_size),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **info}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, int]:
    """The trained network (eval mode, on ``device``) and the square input size it was trained at."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"U-Net checkpoint {path} does not exist; {TRAIN_HINT}")
    with checkpoint_errors(path, "U-Net"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise WeightsNotFoundError(f"{path} is not a salip-bench U-Net checkpoint (no format "
                                   f"{CHECKPOINT_FORMAT!r}); {TRAIN_HINT}")
    net = build_unet(**checkpoint["arch"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval().to(device), int(checkpoint["image_size"])
