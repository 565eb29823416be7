"""Method ``salip_propagate``: SaLIP on a few slices of a volume, SAM 2 carries the best through the rest.

Per volume and organ: SaLIP (the ``salip`` method's stages) runs on sparse slices (every ``every``-th,
or ``count`` spread over the volume); the key slice(s) are those whose prediction is best by SaLIP's
label-free ``quality`` (the ``salip`` quality estimator, :mod:`salip_bench.qc.salip`; the top retrieval
score where a prediction has none); SAM 2's video predictor is seeded with their masks and propagates forward and
backward. Where SAM 2's object score says the organ is gone, the slice is empty.

The harness asks slice by slice: the whole volume is computed, for all the run's organs, when its first
slice is asked for, and every slice of it is answered from that (one volume held at a time). The organs
of a sampled slice share its "segment everything" pass, filter and CLIP embeddings (as ``method=salip``'s
organs of a slice do); each organ then has its own keys and SAM 2 propagation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from salip_bench.engines.roles import Propagator, require_role
from salip_bench.methods.pipeline import Filter, Generate, Refine, Retrieve
from salip_bench.methods.salip import SalipMethod
from salip_bench.qc.salip import SalipQuality
from salip_bench.registry import METHODS, PluginError
from salip_bench.types import Prediction, Sample

NOT_FOUND = "organ found on no sampled slice"


def sampled_slices(n_slices: int, every: int | None, count: int | None) -> list[int]:
    """The slices SaLIP runs on: every ``every``-th (centred in the volume), or ``count`` spread evenly
    (``count`` wins when both are set); never more than the volume has, never none.

    Args:
        n_slices: slices in the volume.
        every: a stride >= 1, or None.
        count: a number of slices >= 1, or None.
    """
    if count is not None:
        count = min(int(count), n_slices)
        return sorted({int(round(i)) for i in np.linspace(0, n_slices - 1, count + 2)[1:-1]}) if count < n_slices \
            else list(range(n_slices))
    stride = max(1, int(every or 1))
    start = (n_slices - 1) % stride // 2  # centred: a volume's ends are where an organ is least likely
    return list(range(start, n_slices, stride))


@dataclass(frozen=True)
class OrganVolume:
    """One organ's masks through a volume, kept as their 3D bounding box: a volume's organs are held
    (until its last slice is answered) at the size of each organ, not of the volume.

    Args:
        shape: a slice's (H, W).
        box: the masks' bounding box (slices, rows, columns), or None when every mask is empty.
        crop: the masks inside ``box``.
    """

    shape: tuple[int, int]
    box: tuple[slice, slice, slice] | None
    crop: np.ndarray | None

    @classmethod
    def of(cls, masks: np.ndarray) -> OrganVolume:
        """From (N, H, W) bool masks."""
        found = ndimage.find_objects(masks.astype(np.uint8))
        box = found[0] if found else None
        return cls(masks.shape[1:], box, None if box is None else masks[box].copy())

    def __getitem__(self, index: int) -> np.ndarray:
        """Slice ``index``'s (H, W) bool mask."""
        mask = np.zeros(self.shape, bool)
        if self.box is not None and self.box[0].start <= index < self.box[0].stop:
            mask[self.box[1:]] = self.crop[index - self.box[0].start]
        return mask


def key_score(prediction: Prediction) -> tuple[float, str]:
    """How much a slice's SaLIP answer is trusted, and by what: its ``quality`` when the method gives one,
    else its best retrieval score."""
    if prediction.info.get("quality") is not None:
        return float(prediction.info["quality"]), "quality"
    scores = prediction.info.get("retrieved_scores") or []
    return (float(max(scores)) if scores else float("-inf")), "retrieval"


@METHODS.register("salip_propagate")
class SalipPropagateMethod:
    """SaLIP on key slices, SAM 2 propagation through the volume.

    Args:
        generator, filter, retriever, refiner, top_k: SaLIP's stages, as ``method=salip`` gets them.
        propagator_sam: the engine with the propagation role (``model@propagator_model=``; default the
            ``model``'s own, so key slices share their encoder pass).
        volume_frames: the dataset's ``volume_frames`` (a sample's volume: first slice index, frames).
        run_organs: the run's organs (``dataset.organs``, in the order its samples ask for them), or None
            for a dataset whose mask is one target.
        every: run SaLIP on every ``every``-th slice.
        count: or on ``count`` slices spread over the volume (wins over ``every``).
        keys: how many of the best sampled slices seed SAM 2.
        min_score: sampled slices scoring below this are never keys (null: any non-empty one).
        offload_state_to_cpu: keep SAM 2's per-frame memory in CPU memory.
        max_state_gb: a volume whose frame memory would exceed this fails before any work.
    """

    needs_prompts = True
    info_columns = {"slice_role": "json", "key_slices": "json", "key_scores": "json", "key_source": "json",
                    "object_score": "float"}

    def __init__(self, generator: Generate, filter: Filter, retriever: Retrieve, refiner: Refine,  # noqa: A002
                 top_k: dict[str, int], propagator_sam: object,
                 volume_frames: Callable[[dict], tuple[int, np.ndarray]] | None, run_organs: list[str] | None = None,
                 every: int | None = 5, count: int | None = None, keys: int = 1, min_score: float | None = None,
                 offload_state_to_cpu: bool = False, max_state_gb: float | None = 8.0) -> None:
        require_role(propagator_sam, Propagator, "method salip_propagate", "model@propagator_model=sam2_hiera_t")
        if volume_frames is None:
            raise PluginError("method salip_propagate needs a volume dataset (dataset=nnunet or dataset=volumes)")
        if (every is None or int(every) < 1) and (count is None or int(count) < 1):
            raise PluginError(f"method salip_propagate: every={every} / count={count}: set every >= 1 or count >= 1")
        if int(keys) < 1:
            raise PluginError(f"method salip_propagate: keys={keys} must be >= 1")
        self.salip = SalipMethod(generator, filter, retriever, refiner, top_k)
        self.quality = SalipQuality()
        self.propagator, self.volume_frames = propagator_sam, volume_frames
        self.organs: list[str | None] = list(run_organs) if run_organs else [None]
        # the propagator is SaLIP's own engine (the default): the sampled slices' features are held for it
        self.shares_encoder = getattr(generator, "sam", None) is propagator_sam
        self.every, self.count, self.keys, self.min_score = every, count, int(keys), min_score
        self.offload_state_to_cpu, self.max_state_gb = offload_state_to_cpu, max_state_gb
        self._case: str | None = None
        self._volumes: dict[str | None, dict] = {}  # organ -> its volume's answer, for the current case

    def __call__(self, sample: Sample) -> Prediction:
        case, organ = sample.meta["case"], sample.meta.get("organ")
        if case != self._case:
            self._case, self._volumes = case, {}
        if organ not in self._volumes:
            organs = self.organs if organ in self.organs else [organ]
            self._volumes.update(zip(organs, self.volume(sample.meta, organs)))
        volume = self._volumes[organ]
        index = sample.meta["slice"] - volume["first"]
        mask = volume["masks"][index]
        if mask.shape != sample.image.shape[:2]:  # dataset.max_side downscaled the slice
            mask = np.asarray(Image.fromarray(mask).resize(sample.image.shape[1::-1], Image.NEAREST))
        role = volume["roles"][index]
        info = {"slice_role": role, "key_slices": volume["keys"], "key_scores": volume["scores"],
                "key_source": volume["source"], "object_score": volume["object_scores"][index]}
        return Prediction(mask=mask, info=info)

    def volume(self, meta: dict, organs: list[str | None]) -> list[dict]:
        """The whole volume's answer for each of ``organs``: masks, per-slice roles, keys and object scores.

        Refused before any work when SAM 2's memory for it would exceed ``max_state_gb``; the sampled
        slices' features are held until the last organ's propagation, so no slice is encoded twice, and
        each sampled slice has one "segment everything" pass for all ``organs``.
        """
        first, frames = self.volume_frames(meta)
        n = len(frames)
        sampled = sampled_slices(n, self.every, self.count)
        held = len(sampled) if self.shares_encoder else 0
        with self.propagator.reserved(n, held, self.offload_state_to_cpu, self.max_state_gb):
            best: dict[str | None, list[tuple[float, str, int, np.ndarray]]] = {organ: [] for organ in organs}
            for index in sampled:  # slice-major: a slice's organs follow each other and share its pass
                for organ in organs:
                    answer = self.key_candidate(meta["case"], first + index, frames[index], organ)
                    score, source = key_score(answer)
                    if answer.mask.any() and (self.min_score is None or score >= self.min_score):
                        # only the best `keys` masks of an organ are kept (a stable sort: ties go to the first)
                        best[organ] = sorted([*best[organ], (score, source, index, answer.mask)],
                                             key=lambda t: -t[0])[:self.keys]
            return [self.propagated(first, frames, best[organ]) for organ in organs]

    def propagated(self, first: int, frames: np.ndarray, chosen: list[tuple[float, str, int, np.ndarray]]) -> dict:
        """One organ's volume: its ``chosen`` key slices seed SAM 2, which propagates through ``frames``.

        Args:
            first: the volume's first slice index in the dataset.
            frames: (N, H, W, 3) uint8 RGB slices.
            chosen: the keys, best first: (score, what scored it, slice index within ``frames``, SaLIP's mask).
        """
        n = len(frames)
        if not chosen:  # nothing to propagate: an empty volume, recorded as such on every slice
            return {"masks": OrganVolume(frames.shape[1:3], None, None), "roles": [NOT_FOUND] * n, "keys": [],
                    "scores": [], "source": None, "object_scores": [None] * n, "first": first}
        keys = {index: mask for _, _, index, mask in chosen}
        result = self.propagator.propagate(frames, keys, offload_state_to_cpu=self.offload_state_to_cpu,
                                           max_state_gb=self.max_state_gb)
        masks, roles = result.masks.copy(), ["propagated"] * n
        for i, mask in keys.items():  # a key slice answers with SaLIP's own mask
            masks[i], roles[i] = mask, "key"
        return {"masks": OrganVolume.of(masks), "roles": roles, "keys": [first + k for k in sorted(keys)],
                "first": first, "object_scores": [round(float(s), 4) for s in result.object_scores],
                "scores": [round(score, 5) for score, *_ in chosen], "source": chosen[0][1]}

    def key_candidate(self, case: str, slice_index: int, image: np.ndarray, organ: str | None) -> Prediction:
        """SaLIP's answer on one sampled slice, with its label-free ``quality`` (qc=salip; never the
        ground truth): what ranks the key candidates."""
        sample = Sample(id=f"{case}_slice{slice_index:03d}", image=image, mask=None,
                        meta={} if organ is None else {"organ": organ})
        answer = self.salip(sample)
        answer.info.setdefault("quality", self.quality(sample, answer))
        return answer
