"""The one predict loop of runs and tuning's trials: Trainer, loader and :class:`LoopModule` over the
pending samples of one or more targets, and their tables written whatever happens to the loop."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from salip_bench.datasets.settings import DatasetSettings
from salip_bench.engines.weights import RANDOM_WEIGHTS_BANNER
from salip_bench.evaluation.extra_metrics import extra_metrics
from salip_bench.evaluation.finalize import RunTarget, nsd_tolerance
from salip_bench.evaluation.interrupts import deferred
from salip_bench.evaluation.job import check_launchable
from salip_bench.evaluation.lightning_module import PredictModule, ScoreMemo
from salip_bench.evaluation.loop_module import Groups, ImageScope, LoopModule, LoopWriter
from salip_bench.evaluation.memory import MemoryGuard
from salip_bench.evaluation.overlays import first_overlays
from salip_bench.evaluation.rank_order import ContiguousShares
from salip_bench.evaluation.records import results_frame
from salip_bench.evaluation.wandb_log import log_run, make_wandb_logger
from salip_bench.qc.build import build_gate
from salip_bench.types import Prediction, Sample

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One target of a loop and what evaluates it.

    Args:
        target: the run.
        pending: indices into ``target.ids`` still to run.
        module: its :func:`predict_module`.
        stages: which engine key each stage used (:func:`~salip_bench.evaluation.context.stage_engines`).
        texts_encoded: class-prompt sentences CLIP encoded for it.
    """

    target: RunTarget
    pending: list[int]
    module: PredictModule
    stages: dict[str, str] = field(default_factory=dict)
    texts_encoded: int = 0


@dataclass
class Loop:
    """The members of one predict loop and what they share.

    Args:
        members: the targets, in order (one for a normal run).
        engines: every engine they use, by context key.
        groups: the order of the members on an image (None: in order, sharing nothing).
        scope: what they share per image (tuning's decodings and memos), or None.
        tags: extra W&B tags of every member.
    """

    members: list[Member]
    engines: dict
    groups: Groups | None = None
    scope: ImageScope | None = None
    tags: list[str] = field(default_factory=list)


def predict(loop: Loop) -> list[dict]:
    """Evaluate every member's pending samples in one Lightning predict loop over their union, and
    write each member's tables; returns the summaries in order (``{}`` on every DDP rank but global
    rank 0, which alone writes tables and logs).

    Args:
        loop: the members and what they share.
    """
    members, engines = loop.members, loop.engines
    base = members[0].target.cfg
    if base["weights"] == "random":
        log.warning(RANDOM_WEIGHTS_BANNER)
    identity = {k: e.identity for k, e in engines.items()}

    def logger_of(member: Member):
        cfg = member.target.cfg
        return make_wandb_logger(cfg["logger"], member.target.out_dir, {**cfg, "weights_identity": identity},
                                 tags=[cfg["method"]["name"], f"weights={cfg['weights']}", *loop.tags])

    # One member logs through the Trainer; several (tuning's trials) each log after the loop.
    logger = logger_of(members[0]) if len(members) == 1 else None
    overlays = [m.target.cfg["logger"].get("overlays", 0) if logger else 0 for m in members]
    # With masks on disk the overlays are read back after the run (every rank's share); only
    # without them does the writer keep its own first samples in memory.
    writer = LoopWriter([m.target.store for m in members], [m.target.cfg["save_masks"] for m in members],
                        [0 if m.target.cfg["save_masks"] else n for m, n in zip(members, overlays)])
    trainer = L.Trainer(**base["trainer"], logger=logger or False, callbacks=[writer], enable_checkpointing=False)
    check_launchable(trainer, members[0].target.job)
    needed = sorted(set().union(*(m.pending for m in members)))
    module = LoopModule([m.module for m in members], [{m.target.ids[i] for i in m.pending} for m in members],
                        engines, loop.groups, loop.scope)
    loader = DataLoader(Subset(members[0].target.dataset, needed), batch_size=1, collate_fn=list,
                        sampler=ContiguousShares(len(needed), trainer.world_size), num_workers=base["num_workers"])
    texts = [m.texts_encoded for m in members]
    summaries: list[dict] = [{} for _ in members]
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        texts = [sum_after_all_ranks(trainer, count) for count in texts]
    finally:  # a failed or interrupted run still leaves tables of everything finished
        with deferred():  # a stop signal now waits until the tables are written
            for m in members:  # an interrupted sample is pending, not crashed
                m.target.store.clear_own_markers([m.target.ids[i] for i in m.pending])
            # Under DDP only global rank 0 derives the tables and logs: once, from every rank's records.
            if trainer.is_global_zero:
                summaries = [m.target.finalize(engines, t, m.stages) for m, t in zip(members, texts)]
    if trainer.world_size > 1:
        log.info("rank %d of %d wrote %d samples", trainer.global_rank, trainer.world_size, writer.written)
    if trainer.is_global_zero:
        for number, (m, summary) in enumerate(zip(members, summaries)):
            member_logger = logger if len(members) == 1 else logger_of(m)
            if member_logger is None:
                continue
            target = m.target
            # The first overlays of the whole run (every DDP rank's share), read back from disk.
            kept = (first_overlays(target.dataset, target.ids, target.store, overlays[number])
                    if target.cfg["save_masks"] else writer.kept[number])
            log_run(member_logger, summary, results_frame(target.store.read_all(target.ids)), kept,
                    m.module.pooled)
    return summaries


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
                         quality=build_gate(cfg))


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
