"""SAM 2.1's video propagation over a volume's slices, built in memory on an engine's model.

Upstream's ``SAM2VideoPredictor.init_state`` reads a folder of JPEGs; here the inference state is
built from the slices themselves, and the predictor is a view of the engine's already-built model
(its very modules, no second copy of the weights). Every frame's image features come from the
engine's feature memo, so a key slice encoded for its "everything" pass is not encoded again as a
propagation frame, and each slice costs one encoder pass at most.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from salip_bench.engines.hydra_guard import import_leaving_hydra_alone

# sam2.utils.misc.load_video_frames' normalisation
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class Propagation:
    """What a propagation gives.

    Args:
        masks: (N, H, W) bool, one mask per frame (empty where SAM 2 says the object is gone).
        object_scores: (N,) float32, SAM 2's object score logit per frame (> 0: object present).
        frames_run: frames the memory-conditioned decoder ran on (the key frames not counted).
    """

    masks: np.ndarray
    object_scores: np.ndarray
    frames_run: int


class LazyFrames:
    """The ``images`` of an inference state, (3, S, S) float32 normalised as
    ``sam2.utils.misc.load_video_frames`` makes them, built per frame on access: a long volume
    never holds all its resized frames at once.

    Args:
        frames: (N, H, W, 3) uint8 RGB.
        image_size: the model's input side S.
    """

    def __init__(self, frames: np.ndarray, image_size: int) -> None:
        self.frames, self.image_size = frames, image_size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        resized = Image.fromarray(self.frames[index]).resize((self.image_size, self.image_size))
        image = torch.from_numpy(np.asarray(resized, np.float32) / 255.0).permute(2, 0, 1)
        return (image - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]


def state_bytes_per_frame(model: nn.Module) -> int:
    """What SAM 2 keeps per tracked frame: its memory features (bfloat16), its low-res mask logits and
    its object pointer (float32)."""
    side = model.image_size
    return (model.mem_dim * (side // 16) ** 2 * 2 + (side // 4) ** 2 * 4 + model.hidden_dim * 4)


def feature_bytes_per_image(model: nn.Module) -> int:
    """An image's features as the image predictor keeps them (float32): the stride-16 embedding and
    the two high-resolution maps (``conv_s0``, ``conv_s1`` outputs)."""
    side = model.image_size
    decoder = model.sam_mask_decoder
    return 4 * (model.hidden_dim * (side // 16) ** 2 + decoder.conv_s0.out_channels * (side // 4) ** 2
                + decoder.conv_s1.out_channels * (side // 8) ** 2)


def check_memory(model: nn.Module, n_frames: int, held: int, offload_state_to_cpu: bool,
                 max_state_gb: float | None) -> None:
    """MemoryError (one line) when propagating ``n_frames`` while ``held`` images' features stay in
    memory would take more than ``max_state_gb``.

    Args:
        model: a ``SAM2Base``.
        n_frames: the volume's slices.
        held: images whose features are kept for the propagation (the sampled slices).
        offload_state_to_cpu: where the frame memory lives (named in the message).
        max_state_gb: the bound (None: none).
    """
    state = state_bytes_per_frame(model) * n_frames / 2**30
    features = feature_bytes_per_image(model) * held / 2**30
    if max_state_gb is None or state + features <= max_state_gb:
        return
    where = "CPU" if offload_state_to_cpu else "device"
    held_text = f" + ~{features:.2f} GB for the features of {held} sampled slices" if held else ""
    raise MemoryError(f"propagating {n_frames} slices needs ~{state:.2f} GB of SAM 2 frame memory on the {where}"
                      f"{held_text}, over max_state_gb={max_state_gb}; raise it, offload_state_to_cpu=true, "
                      "sample fewer slices (every/count), or crop the volume (dataset.slice_range)")


@functools.cache
def video_predictor_class() -> type:
    """``SAM2VideoPredictor`` whose frames' features come from a callback (the engine's memo); defined
    on first use (it imports sam2)."""
    module = import_leaving_hydra_alone("sam2.sam2_video_predictor")
    # Upstream wraps each propagation in a tqdm bar; a run logs its own progress.
    module.tqdm = functools.partial(module.tqdm, disable=True)

    class MemoVideoPredictor(module.SAM2VideoPredictor):
        @classmethod
        def around(cls, model: nn.Module, features: Callable[[np.ndarray, bool], tuple]) -> MemoVideoPredictor:
            """A predictor sharing ``model``'s modules and parameters (no copy), with upstream's
            defaults for the video-only settings (``SAM2VideoPredictor.__init__``'s)."""
            predictor = cls.__new__(cls)
            predictor.__dict__.update(model.__dict__)  # the same module and parameter dicts
            predictor.fill_hole_area, predictor.non_overlap_masks = 0, False
            predictor.clear_non_cond_mem_around_input = False
            predictor.add_all_frames_to_correct_as_cond = False
            predictor.frame_features = features
            return predictor

        def _get_image_feature(self, inference_state: dict, frame_idx: int, batch_size: int) -> tuple:
            # The image predictor's features (level 2 with no_mem_embed added, levels 0-1 through
            # conv_s0/s1) turned back into forward_image's backbone_out; positions depend on shape only.
            # a key frame's features are asked again (its memory encoding); any other frame's once
            keep = frame_idx in inference_state["key_frames"]
            _, features = self.frame_features(inference_state["frames"][frame_idx], keep)
            embed = features["image_embed"]
            if self.directly_add_no_mem_embed:
                embed = embed - self.no_mem_embed.view(1, -1, 1, 1)
            fpn = [*features["high_res_feats"], embed]
            position = self.image_encoder.neck.position_encoding
            backbone_out = {"backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in fpn],
                            "vision_pos_enc": [position(f).to(f.dtype).expand(batch_size, -1, -1, -1) for f in fpn]}
            image = inference_state["images"][frame_idx].to(inference_state["device"])[None]
            return (image.expand(batch_size, -1, -1, -1), *self._prepare_backbone_features(backbone_out))

    return MemoVideoPredictor


def inference_state(model: nn.Module, frames: np.ndarray, offload_state_to_cpu: bool,
                    key_frames: frozenset[int] = frozenset()) -> dict:
    """Upstream's ``init_state`` dictionary, built from ``frames`` ((N, H, W, 3) uint8) in memory."""
    device = next(model.parameters()).device
    return {"images": LazyFrames(frames, model.image_size), "frames": frames, "num_frames": len(frames),
            "key_frames": key_frames,
            "offload_video_to_cpu": True, "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": frames.shape[1], "video_width": frames.shape[2], "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
            "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {}}


def check_frames(frames: np.ndarray, keys: Mapping[int, np.ndarray]) -> None:
    """ValueError (one line) for frames or key masks propagation cannot take."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"propagation needs (N, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    if not keys:
        raise ValueError("propagation needs at least one key slice mask")
    for index, mask in keys.items():
        if not 0 <= index < len(frames):
            raise ValueError(f"key slice {index} is outside the volume's {len(frames)} slices")
        if np.shape(mask) != frames.shape[1:3]:
            raise ValueError(f"key slice {index}'s mask is {np.shape(mask)}, its slice {frames.shape[1:3]}")


@torch.inference_mode()
def propagate(model: nn.Module, features: Callable[[np.ndarray, bool], tuple], frames: np.ndarray,
              keys: Mapping[int, np.ndarray], offload_state_to_cpu: bool, max_state_gb: float | None) -> Propagation:
    """Seed SAM 2 with the key masks, propagate forward from the first key to the last slice, then
    backward from it to the first: each slice is decoded once, and a slice between two keys attends
    to both (SAM 2 conditions every frame on all its conditioning frames).

    Args:
        model: a ``SAM2Base``.
        features: (frame, keep in memory) → (original size, image predictor features), from the
            engine's memo.
        frames: (N, H, W, 3) uint8 RGB slices.
        keys: {frame index: (H, W) bool mask}.
        offload_state_to_cpu: keep SAM 2's per-frame memory in CPU memory.
        max_state_gb: refuse, before any work, a volume whose per-frame memory would exceed this.
    """
    check_frames(frames, keys)
    check_memory(model, len(frames), 0, offload_state_to_cpu, max_state_gb)
    predictor = video_predictor_class().around(model, features)
    state = inference_state(model, frames, offload_state_to_cpu, frozenset(keys))
    for index, mask in sorted(keys.items()):
        predictor.add_new_mask(state, index, obj_id=1, mask=torch.as_tensor(np.asarray(mask, bool)))
    masks = np.zeros(frames.shape[:3], bool)
    scores = np.zeros(len(frames), np.float32)
    outputs = state["output_dict_per_obj"][0]
    run = 0
    for reverse in (False, True):
        for index, _, logits in predictor.propagate_in_video(state, start_frame_idx=min(keys), reverse=reverse):
            out = outputs["cond_frame_outputs"].get(index) or outputs["non_cond_frame_outputs"][index]
            score = out.get("object_score_logits")
            scores[index] = float(score.flatten()[0]) if score is not None else 10.0
            masks[index] = (logits[0, 0] > 0).cpu().numpy() if scores[index] > 0 else False
            run += index not in keys
    return Propagation(masks, scores, run)
