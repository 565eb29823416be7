"""The Lightning side of the one predict loop: a module that evaluates each sample for every run
(target) that still needs it, and a writer that marks and stores each target's samples.

A normal run is one target; tuning's image-by-image trials are many targets over the same samples,
whose per-image sharing (decodings, memos) enters through an :class:`ImageScope`. Each target keeps
its own :class:`~salip_bench.evaluation.lightning_module.PredictModule` (scoring, columns, memory
guard) and record store (crash markers, records).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from salip_bench.evaluation.interrupts import deferred
from salip_bench.evaluation.lightning_module import Evaluated, PredictModule
from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.schema import SampleRecord
from salip_bench.types import Prediction, Sample

# Targets evaluated one after another on an image (tuning: the trials of one point grid), with the
# key of what they shared (released after them), or None.
Groups = list[tuple["str | None", list[int]]]


class ImageScope(Protocol):
    """What several targets share while they evaluate one image (tuning's trials)."""

    def around(self, sample: Sample) -> AbstractContextManager:
        """The block in which every target evaluates ``sample``."""

    def release(self, key: str) -> None:
        """A group of targets is done with what it shared under ``key``."""


class LoopModule(L.LightningModule):
    """Evaluates each sample with the :class:`PredictModule` of every target still pending it.

    Args:
        members: one module per target.
        pending: per target, the ids it still needs.
        engines: every engine the members use, by context key (registered here, so that the Trainer
            moves them to the accelerator once).
        groups: the order of the targets on an image (default: all, in order, sharing nothing).
        scope: what they share per image, or None.
    """

    def __init__(self, members: list[PredictModule], pending: list[set[str]], engines: dict[str, nn.Module],
                 groups: Groups | None = None, scope: ImageScope | None = None) -> None:
        super().__init__()
        self.engines = nn.ModuleDict(engines)
        self.members, self.pending, self.scope = members, pending, scope  # a plain list: not registered twice
        # The members' confusion-count metrics are registered, so the Trainer moves them to the
        # accelerator (a DDP reduce of CPU tensors fails under NCCL).
        self.metrics = nn.ModuleList(nn.ModuleList([m.sample_counts, m.run_counts]) for m in members)
        self.groups = groups or [(None, list(range(len(members))))]

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # samples are numpy; the methods move what they need

    def needing(self, sample: Sample) -> list[int]:
        """The targets that still need ``sample``, in order."""
        return [t for t in range(len(self.members)) if sample.id in self.pending[t]]

    def predict_step(self, batch: list[Sample], batch_idx: int) -> list[tuple[int, Evaluated]]:
        out = []
        for sample in batch:
            with self.scope.around(sample) if self.scope is not None else nullcontext():
                for key, targets in self.groups:
                    out.extend((t, self.members[t].evaluate(sample)) for t in targets if sample.id in self.pending[t])
                    if key is not None and self.scope is not None:
                        self.scope.release(key)
        return out


    def on_predict_epoch_end(self) -> None:
        for member in self.members:  # every rank: the pooled counts are summed across ranks
            member.pool(self.trainer)


class LoopWriter(BasePredictionWriter):
    """Marks each sample started in every target that needs it before it runs, and writes each
    target's result (mask PNG, then record) as soon as its batch ends; a stop signal waits until the
    writes are done (:func:`~salip_bench.evaluation.interrupts.deferred`). Keeps each target's first
    ``overlays`` samples for its logger.

    Args:
        stores: one record store per target.
        save_masks: per target, whether masks are written.
        overlays: per target, how many samples to keep for the logger.
    """

    def __init__(self, stores: list[RecordStore], save_masks: list[bool], overlays: list[int]) -> None:
        super().__init__(write_interval="batch")
        self.stores, self.save_masks, self.overlays = stores, save_masks, overlays
        self.kept: list[list[tuple[Sample, Prediction, SampleRecord]]] = [[] for _ in stores]
        self.written = 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        """A marker found on resume names a sample the process died in (run again once, then recorded
        as failed, instead of crashing every resume)."""
        with deferred():
            for sample in batch:
                for t in pl_module.needing(sample):
                    self.stores[t].mark_started(pl_module.members[t].record_head(sample).to_dict())

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        with deferred():
            for t, (record, mask, pred, sample) in prediction:
                self.stores[t].write(record, mask if self.save_masks[t] else None)
                self.written += 1
                if pred is not None and len(self.kept[t]) < self.overlays[t]:
                    self.kept[t].append((sample, pred, record))
