"""The Lightning part of a run: Trainer, loader and :class:`PredictModule` over the pending samples,
and the tables written whatever happens to the loop."""
from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from salip_bench.datasets.settings import DatasetSettings
from salip_bench.engines.weights import RANDOM_WEIGHTS_BANNER
from salip_bench.evaluation.context import built_engines, stage_engines
from salip_bench.evaluation.extra_metrics import extra_metrics
from salip_bench.evaluation.finalize import RunTarget, nsd_tolerance
from salip_bench.evaluation.job import check_launchable
from salip_bench.evaluation.lightning_module import PredictModule, RecordWriter, ScoreMemo
from salip_bench.evaluation.memory import MemoryGuard
from salip_bench.evaluation.overlays import first_overlays
from salip_bench.evaluation.records import results_frame
from salip_bench.evaluation.wandb_log import log_run, make_wandb_logger
from salip_bench.qc.build import build_gate  # qc
from salip_bench.registry import Lazy
from salip_bench.types import Prediction, Sample

log = logging.getLogger(__name__)


def predict(target: RunTarget, pending: list[int], context: dict[str, Lazy],
            method: Callable[[Sample], Prediction]) -> dict:
    """Evaluate ``method`` on the pending samples of ``target`` and write its tables; returns the
    summary (``{}`` on every DDP rank but global rank 0, which alone writes tables and logs).

    Args:
        target: the run.
        pending: indices into ``target.ids`` still to run (:func:`~salip_bench.evaluation.resume.pending_indices`).
        context: the run's :func:`~salip_bench.evaluation.context.build_context`, after ``method`` was built.
        method: the built method.
    """
    cfg, store, ids = target.cfg, target.store, target.ids
    engines, stages = built_engines(context), stage_engines(context)
    if cfg["weights"] == "random":
        log.warning(RANDOM_WEIGHTS_BANNER)
    texts_encoded = getattr(engines.get("clip"), "texts_encoded", 0)
    identity = {k: e.identity for k, e in engines.items()}
    logger = make_wandb_logger(cfg["logger"], target.out_dir, {**cfg, "weights_identity": identity},
                               tags=[cfg["method"]["name"], f"weights={cfg['weights']}"])
    overlays = cfg["logger"].get("overlays", 0) if logger else 0
    # With masks on disk the overlays are read back after the run (every rank's share); only
    # without them does the writer keep its own first samples in memory.
    writer = RecordWriter(store, cfg["save_masks"], 0 if cfg["save_masks"] else overlays)
    trainer = L.Trainer(**cfg["trainer"], logger=logger or False, callbacks=[writer], enable_checkpointing=False)
    check_launchable(trainer, target.job)
    loader = DataLoader(Subset(target.dataset, pending), batch_size=1, collate_fn=list, num_workers=cfg["num_workers"])
    module = predict_module(cfg, method, engines, target.fingerprint, context["generator"].built)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        texts_encoded = sum_after_all_ranks(trainer, texts_encoded)
    finally:  # a failed or interrupted run still leaves tables of everything finished
        store.clear_own_markers([ids[i] for i in pending])  # an interrupted sample is pending, not crashed
        # Under DDP only global rank 0 derives the tables and logs: once, from every rank's records.
        summary = target.finalize(engines, texts_encoded, stages) if trainer.is_global_zero else {}
    if trainer.world_size > 1:
        log.info("rank %d of %d wrote %d samples", trainer.global_rank, trainer.world_size, writer.written)
    if logger is not None and trainer.is_global_zero:
        # The first overlays of the whole run (every DDP rank's share), read back from disk.
        kept = first_overlays(target.dataset, ids, store, overlays) if cfg["save_masks"] else writer.kept
        log_run(logger, summary, results_frame(store.read_all(ids)), kept)
    return summary


def predict_module(cfg: dict, method: Callable[[Sample], Prediction], engines: dict, fingerprint: str,
                   generator_built: bool, score_memo: ScoreMemo | None = None) -> PredictModule:
    """The :class:`PredictModule` of a run config: one builder for runs and tuning's trials, so that a
    trial's records are those of its own run (scoring tolerance, downscaling, memory guard, columns).

    Args:
        cfg: the resolved run config.
        method: the built method.
        engines: the engines it uses, by context key.
        fingerprint: the configuration's hash.
        generator_built: whether the method uses the generator (the memory guard estimates its grid).
        score_memo: shared by modules that score the same samples (tuning's trials), or None.
    """
    memory = MemoryGuard(cfg.get("memory_limit_gb"), cfg["generator"] if generator_built else None)
    columns = extra_metrics(DatasetSettings.from_config(cfg["dataset"]).extra_metrics)
    return PredictModule(method, engines, cfg["fail_fast"], fingerprint, columns, nsd_tolerance(cfg),
                         max_side=cfg["dataset"].get("max_side"), memory=memory, score_memo=score_memo,
                         quality=build_gate(cfg))  # qc


def sum_after_all_ranks(trainer: L.Trainer, count: int) -> int:
    """Waits until every DDP rank has finished predicting (so all records are on disk) and sums a
    per-process work counter over the ranks; on one device it returns ``count`` unchanged.

    Lightning's predict sampler gives each rank a disjoint share of the samples (no padding
    duplicates), so per-sample counters in the records already sum correctly; this is for counters
    every process pays once, such as encoding the class prompts.

    Args:
        trainer: the Trainer that predicted.
        count: this process's count.
    """
    trainer.strategy.barrier("finalize")
    total = trainer.strategy.reduce(torch.tensor(count, device=trainer.strategy.root_device), reduce_op="sum")
    return int(total)
