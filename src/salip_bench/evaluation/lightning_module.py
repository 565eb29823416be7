"""The Lightning side of a run: a predict-only module and a writer that stores each sample."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from salip_bench.storage.content_keys import hashed_once
from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.memory import MemoryGuard, downscale, upscale
from salip_bench.metrics import NSD_TOLERANCE_MM, boundary_metrics, confusion_counts, dice_iou
from salip_bench.types import Prediction, Sample

log = logging.getLogger(__name__)


# Sample metadata copied into its record: grouping keys for per-volume / per-domain summaries, the
# pixel spacing of the boundary metrics, and the dataset's warning about the input (e.g. NaN voxels
# normalised away).
RECORDED_META = ("volume", "domain", "slice", "image_path", "spacing", "warning")


class WorkCounters:
    """Reads the work counters of the engines that were built (SAM encoder passes, CLIP images)."""

    def __init__(self, engines: dict[str, nn.Module]) -> None:
        self.engines = engines

    def snapshot(self) -> dict[str, int]:
        clip = self.engines.get("clip")
        # Every SAM-family engine once (the refiner's may be the generator's very object).
        sams = {id(e): e for k, e in self.engines.items() if k != "clip"}.values()
        return {"sam_encoder_passes": sum(getattr(e, "encoder_passes", 0) for e in sams),
                "clip_images_encoded": getattr(clip, "images_encoded", 0)}


class PredictModule(L.LightningModule):
    """Runs a method on every sample of a batch and scores it; never trains.

    method: any callable Sample → Prediction; engines: the nn.Modules the method uses (registered
    here so the Trainer moves them to the accelerator); fail_fast: re-raise a sample's error
    instead of recording it; fingerprint: the configuration hash stored with each record;
    extra_metrics: dataset-specific columns from (sample, predicted mask), e.g. HC18's circumference;
    nsd_tolerance: NSD tolerance in the units of the sample's ``meta["spacing"]`` (mm where known);
    max_side: evaluate images with a longer side above it downscaled, scored at full size;
    memory: per-sample memory estimate check (None: none). See :mod:`salip_bench.evaluation.memory`.
    """

    def __init__(self, method: Callable[[Sample], Prediction], engines: dict[str, nn.Module],
                 fail_fast: bool, fingerprint: str,
                 extra_metrics: Callable[[Sample, np.ndarray], dict] | None = None,
                 nsd_tolerance: float = NSD_TOLERANCE_MM, max_side: int | None = None,
                 memory: MemoryGuard | None = None) -> None:
        super().__init__()
        self.nsd_tolerance = nsd_tolerance
        self.max_side = max_side
        self.memory = memory
        self.extra_metrics = extra_metrics
        self.method = method
        self.engines = nn.ModuleDict(engines)
        self.counters = WorkCounters(engines)
        self.fail_fast = fail_fast
        self.fingerprint = fingerprint

    def transfer_batch_to_device(self, batch, device, dataloader_idx):  # noqa: ANN001
        return batch  # samples are numpy; the method moves what it needs

    def predict_step(self, batch: list[Sample], batch_idx: int) -> list[tuple[dict, np.ndarray | None, Prediction | None, Sample]]:
        return [self.evaluate(sample) for sample in batch]

    def record_head(self, sample: Sample) -> dict:
        """The keys every record of ``sample`` starts with, finished or failed."""
        return {"id": sample.id, "fingerprint": self.fingerprint,
                **{k: v for k, v in sample.meta.items() if k in RECORDED_META}}

    def evaluate(self, sample: Sample) -> tuple[dict, np.ndarray | None, Prediction | None, Sample]:
        record = self.record_head(sample)
        if sample.error:
            if self.fail_fast:
                raise RuntimeError(f"sample {sample.id}: {sample.error}")
            log.warning("sample %s failed to load: %s", sample.id, sample.error)
            return {**record, "status": "failed", "failure": sample.error}, None, None, sample
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
        except Exception as err:
            if self.fail_fast:
                raise
            if isinstance(err, MemoryError) and str(err).startswith("MemoryEstimate"):
                log.warning("sample %s not run: %s", sample.id, err)
                return {**record, "status": "failed", "failure": str(err)}, None, None, sample
            log.exception("sample %s failed", sample.id)
            return {**record, "status": "failed", "failure": f"{type(err).__name__}: {err}"}, None, None, sample
        after = self.counters.snapshot()
        record.update({"status": "ok", "failure": "", "seconds": round(time.perf_counter() - start, 3),
                       "gt_area": int(sample.mask.sum()) if sample.mask is not None else None,
                       "pred_area": int(prediction.mask.sum())})
        if sample.mask is not None:
            record["dice"], record["iou"] = dice_iou(prediction.mask, sample.mask)
            record.update(confusion_counts(prediction.mask, sample.mask))
            record.update(boundary_metrics(prediction.mask, sample.mask, sample.meta.get("spacing"), self.nsd_tolerance))
        if len(prediction.boxes):  # what the figures draw, for every method (salip also logs retrieved_boxes)
            record["boxes"] = np.round(np.asarray(prediction.boxes, np.float64), 1).tolist()
        if self.extra_metrics is not None:
            record.update(self.extra_metrics(sample, prediction.mask))
        record.update({k: after[k] - before[k] for k in after})
        record.update(prediction.info)
        return record, prediction.mask, prediction, sample


class RecordWriter(BasePredictionWriter):
    """Writes each finished sample (mask PNG, then its record) as soon as its batch ends, and keeps
    the first ``overlays`` samples for the logger."""

    def __init__(self, store: RecordStore, save_masks: bool, overlays: int) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.save_masks = save_masks
        self.overlays = overlays
        self.kept: list[tuple[Sample, Prediction, dict]] = []
        self.written = 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        """Mark each sample as started before it runs: found on resume, it names a sample the
        process died in (recorded as failed then, instead of crashing every resume)."""
        for sample in batch:
            self.store.mark_started({**pl_module.record_head(sample), "status": "failed"})

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,  # noqa: ANN001
                           dataloader_idx) -> None:
        for record, mask, pred, sample in prediction:
            self.store.write(record, mask if self.save_masks else None)
            self.written += 1
            if pred is not None and len(self.kept) < self.overlays:
                self.kept.append((sample, pred, record))
