"""Tuning trials evaluated image by image, so that each model pass is paid once per image.

Today's alternative, one ordinary run per trial, decodes every image again in every trial although
a trial only changes settings applied after SAM's passes. Here all trials are evaluated in one
Lightning predict loop over the split: for each image, the trials sharing a point grid (the
generator's :attr:`~salip_bench.stages.generators.sam_everything.SamEverythingGenerator.grid`) share one
``initialize`` (SAM encoder and decoder, keeping every mask the lowest ``pred_iou_thresh`` among
them can pass), and each trial ``apply``-s its own thresholds to it. The engines (and so the
memoised SAM embeddings and CLIP's embedding cache) are shared by all trials. Each trial still
writes an ordinary run directory (records, masks, results.csv, summary.json): resumable, and
reported like any run. A trial's results are those of its own run, bit for bit
(tests/test_tune.py); only its work counters and seconds differ, since the first trial of an
image pays what the others reuse.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Subset

from salip_bench.evaluation.harness import (build_context, check_launchable, config_fingerprint, finalize,
                                            pending_indices, sum_after_all_ranks)
from salip_bench.evaluation.predict_loop import predict_module
from salip_bench.engines.box_memo import BoxMemoStore, unwrapped
from salip_bench.evaluation.context import built_engines, stage_engines
from salip_bench.storage.content_keys import hashed_once
from salip_bench.evaluation.records import RecordStore, results_frame
from salip_bench.evaluation.wandb_log import log_run, make_wandb_logger
from salip_bench.evaluation.job import Job
from salip_bench.evaluation.lightning_module import PredictModule, ScoreMemo
from salip_bench.engines.weights import RANDOM_WEIGHTS_BANNER
from salip_bench.registry import DATASETS, METHODS, Lazy
from salip_bench.evaluation.tuned import apply_tuned
from salip_bench.types import Candidates, Sample

log = logging.getLogger(__name__)
# The config groups a trial may change while sharing the engines (and so their passes) with the others.
STAGE_GROUPS = ("method", "generator", "filter", "retriever", "refiner")


def share_engines(configs: list[dict]) -> bool:
    """Whether the trial configs differ only in their stages (and output_dir), so one set of engines,
    one dataset and one predict loop serve them all."""
    def rest(cfg: dict) -> str:
        return json.dumps({k: v for k, v in cfg.items() if k not in (*STAGE_GROUPS, "output_dir")},
                          sort_keys=True, default=str)
    return len({rest(cfg) for cfg in configs}) == 1


class SharedDecoding:
    """The decoded grids of the image being evaluated, shared by the generators of all trials.

    A generator takes part if it has the split interface (``grid``, ``pred_iou_thresh``,
    ``initialize(image, min_pred_iou_thresh)``, ``apply(decoded)``); others run as they are.
    """

    def __init__(self) -> None:
        self.floors: dict[str, float] = {}
        self.image: np.ndarray | None = None
        self.decoded: dict[str, Any] = {}

    def wrap(self, generator: Callable[[np.ndarray], Candidates]) -> Callable[[np.ndarray], Candidates]:
        """``generator``, sharing its decodings with the other trials' generators of the same grid."""
        if not all(hasattr(generator, name) for name in ("grid", "pred_iou_thresh", "initialize", "apply")):
            return generator
        key = self.key(generator)
        self.floors[key] = min(self.floors.get(key, np.inf), float(generator.pred_iou_thresh))
        return _SharingGenerator(generator, self, key)

    @staticmethod
    def key(generator: Any) -> str:
        return json.dumps(generator.grid, sort_keys=True, default=str)

    def start(self, image: np.ndarray | None) -> None:
        """A new image: the decodings of the previous one are dropped."""
        self.image, self.decoded = image, {}

    def release(self, key: str) -> None:
        self.decoded.pop(key, None)

    def get(self, generator: Any, key: str, image: np.ndarray) -> Any:
        if image is not self.image:  # not the image being shared (a method generating for another picture)
            return generator.initialize(image)
        if key not in self.decoded:
            self.decoded[key] = generator.initialize(image, self.floors[key])
        return self.decoded[key]


class _SharingGenerator:
    """A split generator whose decoding comes from :class:`SharedDecoding` (on a proposals-cache miss)."""

    def __init__(self, generator: Any, shared: SharedDecoding, key: str) -> None:
        self.generator, self.shared, self.key = generator, shared, key

    def __call__(self, image: np.ndarray) -> Candidates:
        return self.generator(image, decoded=lambda: self.shared.get(self.generator, self.key, image))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


class TrialsModule(L.LightningModule):
    """Evaluates every trial that still needs a sample, trials of one grid after one another."""

    def __init__(self, trials: list[PredictModule], pending: list[set[str]], groups: list[tuple[str | None, list[int]]],
                 engines: dict[str, nn.Module], shared: SharedDecoding, box_memo: BoxMemoStore,
                 score_memo: ScoreMemo) -> None:
        super().__init__()
        self.engines = nn.ModuleDict(engines)  # moved to the accelerator by the Trainer; the trials use them
        self.trials, self.pending, self.groups, self.shared = trials, pending, groups, shared
        self.box_memo, self.score_memo = box_memo, score_memo

    def transfer_batch_to_device(self, batch, device, dataloader_idx):  # noqa: ANN001
        return batch

    def predict_step(self, batch: list[Sample], batch_idx: int) -> list[tuple[int, tuple]]:
        out = []
        for sample in batch:
            with hashed_once():
                self.shared.start(sample.image)
                for key, members in self.groups:
                    out.extend((t, self.trials[t].evaluate(sample)) for t in members if sample.id in self.pending[t])
                    if key is not None:
                        self.shared.release(key)  # its low-res logits: 256 KB a mask
            self.shared.start(None)
            self.box_memo.clear()  # trials go image by image: no later call repeats this image's boxes
            self.score_memo.clear()
        return out


class TrialsWriter(BasePredictionWriter):
    """Writes each (trial, sample) result into that trial's record store."""

    def __init__(self, stores: list[RecordStore], save_masks: list[bool]) -> None:
        super().__init__(write_interval="batch")
        self.stores, self.save_masks = stores, save_masks

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,  # noqa: ANN001
                           dataloader_idx) -> None:
        for trial, (record, mask, _, _) in prediction:
            self.stores[trial].write(record, mask if self.save_masks[trial] else None)


def run_trials(configs: list[dict], out_dirs: list[Path], job: Job | None = None) -> list[dict]:
    """Evaluate each trial config (an evaluation config, as ``harness.run`` takes) into its out_dir,
    image by image with shared engines and decodings; returns their summaries in order.

    Args:
        configs: resolved trial configs that :func:`share_engines` accepts.
        out_dirs: one run directory per trial.
        job: the launching command (None: a library call).
    """
    configs = [apply_tuned(cfg) for cfg in configs]
    if not share_engines(configs):
        raise ValueError("trials that differ outside the stage groups "
                         f"{STAGE_GROUPS} cannot share engines: run them one by one (harness.run)")
    base, out_dirs = configs[0], [Path(d) for d in out_dirs]
    L.seed_everything(base["seed"], verbose=False)
    dataset = DATASETS.build(base["dataset"])
    ids = dataset.ids[: base["limit"]] if base.get("limit") else dataset.ids
    fingerprints = [config_fingerprint(cfg) for cfg in configs]
    stores = [RecordStore(d) for d in out_dirs]
    pending = [pending_indices(s, ids, f, base["resume"]) for s, f in zip(stores, fingerprints)]
    needed = sorted(set().union(*pending))
    log.info("%d trials x %d samples, %d samples to run", len(configs), len(ids), len(needed))
    if not needed:
        return [finalize(c, d, s, ids, f, engines={}, texts_encoded=None, job=job)
                for c, d, s, f in zip(configs, out_dirs, stores, fingerprints)]

    shared, models, box_memo, score_memo = SharedDecoding(), {}, BoxMemoStore(), ScoreMemo()
    trials, texts, groups, stages = [], [], {}, []
    for number, cfg in enumerate(configs):
        context = build_context(cfg, dataset, **models, box_memo=box_memo)
        inner = context["generator"]
        context["generator"] = Lazy(lambda inner=inner: shared.wrap(inner()))
        before = {k: getattr(e, "texts_encoded", 0) for k, e in models.items()}
        method = METHODS.build(cfg["method"], **context)
        # The refiner's engine too (moved to the device, counted, reported), without its memo wrapper.
        models.update({k: unwrapped(e) for k, e in built_engines(context).items()})
        stages.append(stage_engines(context))
        texts.append(getattr(models.get("clip"), "texts_encoded", 0) - before.get("clip", 0))
        generator = context["generator"]() if context["generator"].built else None
        key = generator.key if isinstance(generator, _SharingGenerator) else None
        groups.setdefault(key or f"alone:{number}", (key, []))[1].append(number)
        trials.append(predict_module(cfg, method, models, fingerprints[number], generator is not None, score_memo))
    for trial in trials:  # engines a later trial built first are counted for every trial
        trial.counters.engines = models
    if base["weights"] == "random":
        log.warning(RANDOM_WEIGHTS_BANNER)

    writer = TrialsWriter(stores, [cfg["save_masks"] for cfg in configs])
    trainer = L.Trainer(**base["trainer"], logger=False, callbacks=[writer], enable_checkpointing=False)
    check_launchable(trainer, job)
    pending_ids = [{ids[i] for i in p} for p in pending]
    module = TrialsModule(trials, pending_ids, list(groups.values()), models, shared, box_memo, score_memo)
    loader = DataLoader(Subset(dataset, needed), batch_size=1, collate_fn=list, num_workers=base["num_workers"])
    summaries: list[dict] = []
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        texts = [sum_after_all_ranks(trainer, count) for count in texts]
    finally:  # a failed or interrupted tuning still leaves every trial's tables of what finished
        if trainer.is_global_zero:
            summaries = [finalize(c, d, s, ids, f, models, t, used, job=job)
                         for c, d, s, f, t, used in zip(configs, out_dirs, stores, fingerprints, texts, stages)]
    if trainer.is_global_zero:
        identity = {k: e.identity for k, e in models.items()}
        for cfg, out_dir, store, summary in zip(configs, out_dirs, stores, summaries):
            logger = make_wandb_logger(cfg["logger"], out_dir, {**cfg, "weights_identity": identity},
                                       tags=[cfg["method"]["name"], f"weights={cfg['weights']}", "tuning-trial"])
            if logger is not None:
                log_run(logger, summary, results_frame(store.read_all(ids)), [])
    return summaries
