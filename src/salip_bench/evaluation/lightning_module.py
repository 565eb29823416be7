"""The Lightning side of a run: a predict-only module that evaluates and scores one sample at a time
(the loop's module and writer: :mod:`~salip_bench.evaluation.loop_module`)."""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from functools import partial

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics.classification import BinaryStatScores

from salip_bench.evaluation.memory import MemoryGuard, downscale, upscale
from salip_bench.evaluation.schema import (
    CLIP_IMAGES_ENCODED,
    CONFUSION,
    ENGINE_COUNTER,
    FAILED,
    METRICS,
    OK,
    RECORDED_META,
    SAMPLE_COUNTERS,
    SampleRecord,
)
from salip_bench.metrics import NSD_TOLERANCE_MM, boundary_metrics, counts_dict, dice_iou_from_counts, mask_tensor
from salip_bench.storage.content_keys import array_key, hashed_once
from salip_bench.types import Prediction, Sample

log = logging.getLogger(__name__)

# What evaluating one sample gives: its record, predicted mask, prediction and the sample (the last
# three None / the sample for a failure).
Evaluated = tuple[SampleRecord, "np.ndarray | None", "Prediction | None", Sample]



class WorkCounters:
    """Reads the work counters of the engines that were built (SAM encoder, everything and propagation
    passes, CLIP images)."""

    def __init__(self, engines: dict[str, nn.Module]) -> None:
        self.engines = engines

    def snapshot(self) -> dict[str, int]:
        clip = self.engines.get("clip")
        # Every SAM-family engine once (the refiner's may be the generator's very object).
        sams = {id(e): e for k, e in self.engines.items() if k != "clip"}.values()
        counts = {name: sum(e.counters().get(ENGINE_COUNTER[name], 0) for e in sams)
                  for name in SAMPLE_COUNTERS if name != CLIP_IMAGES_ENCODED}
        clip_images = clip.counters().get(ENGINE_COUNTER[CLIP_IMAGES_ENCODED], 0) if clip else 0
        return {**counts, CLIP_IMAGES_ENCODED: clip_images}


class ScoreMemo:
    """Scores of the predictions already scored against the image being evaluated: tuning's trials
    often predict the very same mask for an image, and the boundary metrics (distance transforms at
    full resolution) are then computed once. Keyed by the sample, the NSD tolerance and the mask's
    content key; :meth:`clear`
    when the next image starts."""

    def __init__(self) -> None:
        self._scores: dict[tuple, tuple[dict, dict]] = {}

    def clear(self) -> None:
        self._scores.clear()

    def get(self, sample: Sample, mask: np.ndarray, tolerance: float,
            compute: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
        """``compute()`` (scores, confusion counts) of ``mask`` on ``sample`` at NSD ``tolerance``,
        once per distinct mask."""
        key = (sample.id, tolerance, array_key(mask.astype(bool, copy=False)))
        if key not in self._scores:
            self._scores[key] = compute()
        scores, confusion = self._scores[key]
        return dict(scores), dict(confusion)


class PredictModule(L.LightningModule):
    """Runs a method on every sample of a batch and scores it; never trains.

    method: any callable Sample → Prediction; engines: the nn.Modules the method uses (registered
    here so the Trainer moves them to the accelerator); fail_fast: re-raise a sample's error
    instead of recording it; fingerprint: the configuration hash stored with each record;
    extra_metrics: dataset-specific columns from (sample, predicted mask), e.g. HC18's circumference;
    nsd_tolerance: NSD tolerance in the units of the sample's ``meta["spacing"]`` (mm where known);
    max_side: evaluate images with a longer side above it downscaled, scored at full size;
    memory: per-sample memory estimate check (None: none). See :mod:`salip_bench.evaluation.memory`.
    score_memo: shared with other modules that score the same samples (tuning's trials), or None.
    quality: the quality gate, applied before scoring (``salip_bench.qc``), or None.

    Confusion counts go through torchmetrics' integer stat scores (exact int64): ``sample_counts`` per
    sample, ``run_counts`` over every sample this invocation scores, summed across DDP ranks at the
    end (:attr:`pooled`, logged to W&B). Dice / IoU come from the counts by
    :func:`~salip_bench.metrics.dice_iou_from_counts` (float64, the one empty-mask rule).
    """

    def __init__(self, method: Callable[[Sample], Prediction], engines: dict[str, nn.Module],
                 fail_fast: bool, fingerprint: str,
                 extra_metrics: Callable[[Sample, np.ndarray], dict] | None = None,
                 nsd_tolerance: float = NSD_TOLERANCE_MM, max_side: int | None = None,
                 memory: MemoryGuard | None = None, score_memo: ScoreMemo | None = None,
                 quality: Callable[[Sample, Prediction], Prediction] | None = None) -> None:
        super().__init__()
        self.quality = quality  # the quality gate (salip_bench.qc.gate), or None
        self.score_memo = score_memo
        self.nsd_tolerance = nsd_tolerance
        self.max_side = max_side
        self.memory = memory
        self.extra_metrics = extra_metrics
        self.method = method
        self.engines = nn.ModuleDict(engines)
        self.counters = WorkCounters(engines)
        self.fail_fast = fail_fast
        self.fingerprint = fingerprint
        self.sample_counts = BinaryStatScores(validate_args=False, sync_on_compute=False)
        self.run_counts = BinaryStatScores(validate_args=False)
        self.pooled: dict[str, int | float] = {}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # samples are numpy; the method moves what it needs

    def predict_step(self, batch: list[Sample], batch_idx: int) -> list[Evaluated]:
        return [self.evaluate(sample) for sample in batch]

    def record_head(self, sample: Sample, status: str = FAILED) -> SampleRecord:
        """What every record of ``sample`` starts with, finished or failed (``status`` until it is known)."""
        return SampleRecord(id=sample.id, status=status, fingerprint=self.fingerprint,
                            meta={k: v for k, v in sample.meta.items() if k in RECORDED_META})

    def failed(self, sample: Sample, failure: str) -> Evaluated:
        record = self.record_head(sample)
        record.failure = failure
        return record, None, None, sample

    def evaluate(self, sample: Sample) -> Evaluated:
        """Run the method on ``sample`` and score it; a failure is recorded (or raised with fail_fast)."""
        if sample.error:
            if self.fail_fast:
                raise RuntimeError(f"sample {sample.id}: {sample.error}")
            log.warning("sample %s failed to load: %s", sample.id, sample.error)
            return self.failed(sample, sample.error)
        before, start = self.counters.snapshot(), time.perf_counter()
        try:
            work, scale = downscale(sample, self.max_side)
            refusal = self.memory.refusal(*work.image.shape[:2], self.max_side) if self.memory else None
            if refusal:
                raise MemoryError(refusal)
            with hashed_once():  # the caches and the refiner look this image up several times
                prediction = self.method(work)
            if prediction.mask.shape != work.image.shape[:2]:
                raise ValueError(f"prediction shape {prediction.mask.shape} != image {work.image.shape[:2]}")
            prediction = upscale(prediction, sample.image.shape[:2], scale)
            if self.quality is not None:  # quality columns; below qc.abstain_below, an empty mask
                prediction = self.quality(sample, prediction)
        except Exception as err:
            if self.fail_fast:
                raise
            if isinstance(err, MemoryError) and str(err).startswith("MemoryEstimate"):
                log.warning("sample %s not run: %s", sample.id, err)
                return self.failed(sample, str(err))
            log.exception("sample %s failed", sample.id)
            return self.failed(sample, f"{type(err).__name__}: {err}")
        try:  # scoring is per sample too: an error here fails this sample, not the run
            return self.scored(sample, prediction, before, start)
        except Exception as err:
            if self.fail_fast:
                raise
            log.exception("sample %s: scoring failed", sample.id)
            return self.failed(sample, f"scoring failed: {type(err).__name__}: {err}")

    def scored(self, sample: Sample, prediction: Prediction, before: dict[str, int], start: float) -> Evaluated:
        """The record of ``sample`` predicted as ``prediction``: scores, counters since ``before``, seconds
        since ``start``, dataset columns and the method's info."""
        after = self.counters.snapshot()
        record = self.record_head(sample, OK)
        record.failure, record.seconds = "", round(time.perf_counter() - start, 3)
        record.gt_area = int(sample.mask.sum()) if sample.mask is not None else None
        record.pred_area = int(prediction.mask.sum())
        if sample.mask is not None:
            score = partial(self.score, prediction.mask, sample)
            memo = self.score_memo
            scored = memo.get(sample, prediction.mask, self.nsd_tolerance, score) if memo else score()
            record.scores, record.confusion = scored
            self.run_counts.update(*self.tensors(prediction.mask, sample.mask))
        if len(prediction.boxes):  # what the figures draw, for every method (salip also logs retrieved_boxes)
            record.boxes = np.round(np.asarray(prediction.boxes, np.float64), 1).tolist()
        record.counters = {k: after[k] - before[k] for k in after}
        # Dataset columns (HC18's circumference), then the method's info: later keys win, as before.
        extra = {**(self.extra_metrics(sample, prediction.mask) if self.extra_metrics is not None else {}),
                 **prediction.info}
        record = SampleRecord.from_dict({**record.to_dict(), **extra})
        return record, prediction.mask, prediction, sample

    def tensors(self, mask: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` and ``target`` as the stat scores count them, on the metrics' device."""
        device = self.run_counts.device
        return mask_tensor(mask, device), mask_tensor(target, device)

    def score(self, mask: np.ndarray, sample: Sample) -> tuple[dict, dict]:
        """The scores (Dice, IoU, NSD, HD95) and confusion counts of ``mask`` against ``sample.mask``."""
        self.sample_counts.reset()
        self.sample_counts.update(*self.tensors(mask, sample.mask))
        counts = counts_dict(self.sample_counts.compute())
        dice, iou = dice_iou_from_counts(**counts)
        boundary = boundary_metrics(mask, sample.mask, sample.meta.get("spacing"), self.nsd_tolerance)
        return ({"dice": dice, "iou": iou, **{m: boundary[m] for m in METRICS if m in boundary}},
                {k: counts[k] for k in CONFUSION})

    def pool(self, trainer: L.Trainer) -> None:
        """The run's pooled counts (every scored sample of this invocation, all DDP ranks) and their
        Dice / IoU, in :attr:`pooled`; empty when nothing was scored. Every rank calls this at the end
        of the loop (:class:`~salip_bench.evaluation.loop_module.LoopModule`; the sum across ranks is a collective)."""
        scored = torch.tensor(int(self.run_counts.update_called), device=self.run_counts.device)
        if trainer.world_size > 1:
            scored = trainer.strategy.reduce(scored, reduce_op="sum")
        if not int(scored):
            self.pooled = {}
            return
        with warnings.catch_warnings():  # a DDP rank that scored nothing adds zeros: that is right
            warnings.filterwarnings("ignore", message=".*compute.*before.*update", category=UserWarning)
            counts = counts_dict(self.run_counts.compute())
        dice, iou = dice_iou_from_counts(**counts)
        self.pooled = {**counts, "dice": dice, "iou": iou}

