"""Engine ``medsam``: MedSAM (Ma et al. 2024), SAM ViT-B fine-tuned on medical images, box prompts only.

MedSAM was trained with its own preprocessing, not ``SamPredictor``'s: the image is resized to the
encoder's square input *without* keeping the aspect ratio (bicubic with anti-aliasing, back to
uint8), min–max scaled to [0, 1] with no pixel mean/std, the box scaled into that square frame;
the decoder's single low-resolution mask is turned into a probability, upsampled bilinearly to the
image and thresholded at 0.5. This engine follows that published inference recipe
(``MedSAM_Inference.py`` of bowang-lab/MedSAM; tests/test_engines_medsam.py reproduces it).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from skimage.transform import resize

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.box_scores import BoxMasks, BoxScores
from salip_bench.engines.memo import DiskCodec
from salip_bench.engines.sam_model import load_sam
from salip_bench.engines.weights import SMOKE_ADVICE, weights_identity
from salip_bench.registry import ENGINES
from salip_bench.storage.content_keys import image_key
from salip_bench.storage.feature_cache import FeatureCache

WHERE_TO_GET = "MedSAM's checkpoint is linked from the README of github.com/bowang-lab/MedSAM (Google Drive)."


def medsam_input(image: np.ndarray, side: int) -> np.ndarray:
    """MedSAM's network input from an (H, W, 3) uint8 image: (side, side, 3) float64 in [0, 1].

    Args:
        image: (H, W, 3) uint8 RGB.
        side: the encoder's square input side (1024 for the released model).
    """
    resized = resize(image, (side, side), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    low, high = resized.min(), resized.max()
    return (resized - low) / np.clip(high - low, a_min=1e-8, a_max=None)


class MedSamEngine(BaseEngine):
    """MedSAM's box-prompted segmentation with its own preprocessing, and a count of encoder passes.

    sam: the SAM ViT-B architecture holding MedSAM's weights; identity: where they come from;
    config: its config entry; memo_size: image embeddings kept in memory (one per image: all its
    boxes share it).
    """

    def __init__(self, sam: Sam, identity: dict, config: dict | None = None, memo_size: int = 4) -> None:
        super().__init__(identity, config)
        self.sam = sam.eval()
        self.side = sam.image_encoder.img_size
        self.embeddings = self.memo(memo_size, DiskCodec("embeddings", self._load_embedding, self._save_embedding))

    def _load_embedding(self, cache: FeatureCache, key: str) -> torch.Tensor | None:
        stored = cache.load_embedding(key)
        return None if stored is None else stored["embedding"].to(self.device)

    @staticmethod
    def _save_embedding(cache: FeatureCache, key: str, value: torch.Tensor) -> None:
        cache.save_embedding(key, {"embedding": value})

    def _encoded(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.tensor(medsam_input(image, self.side)).float().permute(2, 0, 1)[None].to(self.device)
        self.encoder_passes += 1
        return self.sam.image_encoder(pixels)

    def embedding(self, image: np.ndarray) -> torch.Tensor:
        """The image encoder's output for ``image`` (memoised by image content, and on disk).

        Args:
            image: (H, W, 3) uint8 RGB.
        """
        return self.embeddings.fetch(self.cache_key("embedding", image_key(image)), lambda: self._encoded(image))

    @torch.no_grad()
    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray, multimask_output: bool,
                      with_scores: bool = False) -> np.ndarray | BoxMasks:
        """One mask per box. MedSAM was trained for one mask per box; with ``multimask_output`` the
        best-scored of SAM's three heads is kept (off MedSAM's recipe).

        The :class:`~salip_bench.engines.roles.BoxPromptSegmenter` role: (K, H, W) bool masks.
        """
        height, width = image.shape[:2]
        embedding = self.embedding(image)
        frame = np.array([width, height, width, height])
        out, scored = np.zeros((len(boxes), height, width), bool), BoxScores(len(boxes))
        for i, box in enumerate(np.asarray(boxes, np.float64)):
            box_t = torch.as_tensor(box / frame * self.side, dtype=torch.float, device=self.device)[None, None]
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
            logits, iou = self.sam.mask_decoder(image_embeddings=embedding,
                                                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=multimask_output)
            best = int(iou[0].argmax()) if multimask_output else 0
            probability = F.interpolate(torch.sigmoid(logits[:, best:best + 1]), size=(height, width),
                                        mode="bilinear", align_corners=False)
            out[i] = probability[0, 0].cpu().numpy() > 0.5
            scored.add_probability(i, probability[0, 0].cpu().numpy(), float(iou[0, best]))
        return scored.result(out) if with_scores else out


@ENGINES.register("medsam")
def build_medsam_engine(cfg: dict, weights: str, key: str = "model") -> MedSamEngine:
    """MedSAM from a ``conf/model/medsam_*.yaml`` entry (build it with
    :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the entry: SAM ViT-B architecture numbers and where MedSAM's checkpoint is.
        weights: ``pretrained`` or ``random``; key: the config key that picked it.
    """
    sam, path = load_sam(cfg, weights, key, "MedSAM", f"{WHERE_TO_GET} {SMOKE_ADVICE}")
    return MedSamEngine(sam, weights_identity("medsam", cfg["name"], path, int(cfg.get("random_seed", 0))), cfg)
