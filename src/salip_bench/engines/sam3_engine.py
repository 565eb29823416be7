"""Engine ``sam3``: SAM 3 (Meta's ``sam3`` wheel) as a text-prompted instance segmenter.

SAM 3 finds every instance of a short noun phrase ("lungs", "fetal head"). The image backbone runs
once per image (memoised, so several class prompts on one image cost one pass); each prompt then
runs the text encoder, the fusion encoder/decoder and the mask head. Instances are thresholded on
SAM 3's score (query probability × presence probability, as upstream's ``Sam3Processor``) and only
the best ``max_instances`` are upsampled to image size.

Weights (``weights=pretrained``): resolved as every family's (explicit ``model.checkpoint`` → our
checkpoint cache → the Hugging Face cache of the gated repo ``facebook/sam3`` → a hub download, which
needs the licence accepted and ``huggingface-cli login``). ``weights=random`` builds the configured
sizes untrained.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from salip_bench.engines.base import BaseEngine
from salip_bench.engines.sam3_model import build_sam3_image
from salip_bench.engines.weights import (
    WeightsNotFoundError,
    WeightsSource,
    load_state_dict,
    pretrained_or_random,
    resolve_weights,
    weights_identity,
)
from salip_bench.registry import ENGINES, PluginError
from salip_bench.storage.content_keys import image_key

log = logging.getLogger(__name__)


def sam3_weights_source(cfg: dict, key: str) -> WeightsSource:
    """Where a ``conf/model/sam3*.yaml`` entry's checkpoint may be: explicit path → our caches → the
    Hugging Face cache of the gated ``hub_repo`` → a hub download (needs the licence accepted).

    Args:
        cfg: the entry (``hub_repo``, ``checkpoint_file``, ``checkpoint``).
        key: the config key that picked it.
    """
    repo, file_name = cfg["hub_repo"], cfg["checkpoint_file"]
    advice = (f"SAM 3 is gated: accept the SAM License at https://huggingface.co/{repo} and run "
              "`huggingface-cli login` first. For an offline smoke run use model=sam3_tiny weights=random "
              "(its numbers are meaningless).")
    return WeightsSource(f"SAM 3 {cfg['name']}", file_name, f"{key}.checkpoint", cfg.get("checkpoint"),
                         hub_repo=repo, advice=advice)


def load_sam3_checkpoint(model: nn.Module, path: Path) -> None:
    """Load upstream's layout (``model`` dict with ``detector.*`` image-model keys, ``tracker.*`` video
    keys): the detector keys must cover the image model exactly — a partial load is an error, never random.

    Args:
        model: the image model to fill.
        path: the checkpoint file.
    """
    state = load_state_dict(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    detector = {k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")}
    missing, unexpected = model.load_state_dict(detector, strict=False)
    if missing or unexpected:
        raise WeightsNotFoundError(f"SAM 3 checkpoint {path} does not fit model.arch: {len(missing)} missing keys "
                                   f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")


@contextlib.contextmanager
def pinning_is_a_no_op_without_cuda() -> Iterator[None]:
    """Upstream's geometry encoder pins a 4-element tensor before copying it to the input's device,
    which raises on a machine without CUDA; there, pinning is only a transfer hint, so within this
    context it returns the tensor itself (same values)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original  # type: ignore[method-assign]


class Sam3Engine(BaseEngine):
    """SAM 3's image model with upstream's preprocessing; role ``segment_text``.

    Counters: ``encoder_passes`` (image backbone runs), ``text_prompts`` (prompts decoded). The
    backbone state of the last image is memoised (in memory only: it is not plain tensors).
    """

    COUNTERS = ("encoder_passes", "text_prompts")

    def __init__(self, model: nn.Module, image_size: int, identity: dict, config: dict | None = None) -> None:
        super().__init__(identity, config)
        self.model = model.eval()
        self.image_size = image_size
        self._processor = None
        self.states = self.memo(1)

    def processor(self):  # sam3's Sam3Processor, imported lazily
        """Upstream's processor (its transform and find-stage inputs) on the model's current device."""
        if self._processor is None or self._processor.device != self.device:
            from sam3.model.sam3_image_processor import Sam3Processor

            self._processor = Sam3Processor(self.model, resolution=self.image_size, device=self.device)
        return self._processor

    def image_state(self, image: np.ndarray) -> dict:
        """The backbone features of an image, computed once per distinct image.

        Args:
            image: (H, W, 3) uint8 RGB.
        """
        return self.states.fetch(self.cache_key("backbone", image_key(image)), lambda: self._encoded(image))

    def _encoded(self, image: np.ndarray) -> dict:
        state = self.processor().set_image(Image.fromarray(np.ascontiguousarray(image)))
        self.encoder_passes += 1
        return state

    @torch.inference_mode()
    def segment_text(self, image: np.ndarray, text: str, min_score: float = 0.5,
                     max_instances: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every instance of the concept ``text`` in ``image``, best score first.

        Args:
            image: (H, W, 3) uint8.
            text: the noun phrase.
            min_score: keep instances scoring above this (upstream's default confidence threshold: 0.5).
            max_instances: keep at most this many (the best); None keeps all.

        Returns:
            masks (N, H, W) bool, scores (N,) float32, boxes (N, 4) float32 XYXY pixels.
        """
        from sam3.model import box_ops
        from sam3.model.data_misc import interpolate

        processor = self.processor()
        state = self.image_state(image)
        processor.reset_all_prompts(state)
        state["backbone_out"].update(self.model.backbone.forward_text([text], device=self.device))
        with pinning_is_a_no_op_without_cuda():
            outputs = self.model.forward_grounding(backbone_out=state["backbone_out"],
                                                   find_input=processor.find_stage,
                                                   geometric_prompt=self.model._get_dummy_prompt(), find_target=None)
        self.text_prompts += 1
        presence = outputs["presence_logit_dec"].sigmoid().unsqueeze(1)
        probs = (outputs["pred_logits"].sigmoid() * presence).squeeze(-1)[0]  # (Q,)
        keep = torch.nonzero(probs > min_score).flatten()
        keep = keep[torch.argsort(probs[keep], descending=True, stable=True)][:max_instances]
        height, width = image.shape[:2]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=probs.device)
        boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"][0, keep]) * scale
        logits = outputs["pred_masks"][0, keep].unsqueeze(1)
        masks = (interpolate(logits, (height, width), mode="bilinear", align_corners=False).sigmoid() > 0.5)[:, 0] \
            if len(keep) else torch.zeros((0, height, width), dtype=torch.bool)
        return (masks.cpu().numpy(), probs[keep].float().cpu().numpy(),
                boxes.float().cpu().numpy().reshape(-1, 4))


@ENGINES.register("sam3")
def build_sam3_engine(cfg: dict, weights: str, key: str = "model") -> Sam3Engine:
    """Build SAM 3 from a ``conf/model/sam3*.yaml`` entry (build it with
    :func:`~salip_bench.engines.builder.build_engine`).

    Args:
        cfg: the model group entry: ``arch`` (sizes, see :func:`build_sam3_image`), ``hub_repo``,
            ``checkpoint_file``, ``checkpoint`` (explicit path), ``random_seed``, ``pretrained_allowed``
            (false for the tiny variant).
        weights: ``pretrained`` or ``random``.
        key: the config key that picked it, named in messages.
    """
    import importlib.util

    import open_clip

    if importlib.util.find_spec("sam3") is None:  # an optional extra: say how to get it, not a traceback
        raise PluginError(f"model={cfg['name']} needs Meta's sam3 package (SAM License), an optional extra: "
                          'pip install -e ".[sam3]"')
    source = (lambda: resolve_weights(sam3_weights_source(cfg, key))) if cfg.get("pretrained_allowed", True) else None
    path = pretrained_or_random(cfg, weights, source)  # fail before the slow build
    # SAM 3's tokenizer is CLIP's BPE; the sam3 wheel does not ship the file its builder points at.
    model = build_sam3_image(cfg["arch"], open_clip.tokenizer.default_bpe())
    if path is not None:
        load_sam3_checkpoint(model, path)
        log.info("SAM 3 loaded from %s", path)
    extra = {"hub_repo": cfg["hub_repo"]} if path is not None else {}
    identity = weights_identity("sam3", cfg["name"], path, int(cfg.get("random_seed", 0)), **extra)
    return Sam3Engine(model, int(cfg["arch"]["image_size"]), identity, cfg)
