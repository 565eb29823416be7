"""A whole evaluation run: config → dataset, models, method → Lightning predict → outputs."""
from __future__ import annotations

import hashlib
import json
import logging
import platform
from importlib import metadata
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from salip_bench.config_keys import FULL_PRECISION, NON_SEMANTIC_KEYS, NON_SEMANTIC_NESTED
from salip_bench.io.feature_cache import FeatureCache
from salip_bench.io.records import RecordStore, aggregate, results_frame, write_if_changed
from salip_bench.io.wandb_log import log_run, make_wandb_logger
from salip_bench.lightning_module import PredictModule, RecordWriter
from salip_bench.metrics import EMPTY_MASK_CONVENTION
from salip_bench.models.clip import build_clip
from salip_bench.models.sam import build_sam
from salip_bench.models.shared import shared_engine
from salip_bench.models.weights import RANDOM_WEIGHTS_BANNER, file_sha256
from salip_bench.registry import DATASETS, ENGINES, FILTERS, GENERATORS, METHODS, REFINERS, RETRIEVERS, Lazy
from salip_bench.tuned import apply_tuned

log = logging.getLogger(__name__)

PACKAGES = ("salip-bench", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "segment-anything",
            "open_clip_torch", "torchmetrics", "monai", "wandb", "numpy")


def config_fingerprint(cfg: dict) -> str:
    """Hash of everything that changes predictions: the semantic config and, for a method that
    loads a file of its own (the U-Net's checkpoint), that file's contents, so a retrained
    checkpoint at the same path is not mistaken for the old one on resume."""
    semantic = {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}
    for group, key in (dotted.split(".") for dotted in NON_SEMANTIC_NESTED):
        if isinstance(semantic.get(group), dict):
            semantic[group] = {k: v for k, v in semantic[group].items() if k != key}
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    if precision not in FULL_PRECISION:  # bf16 autocast changes predictions (slightly): another configuration
        semantic["precision"] = precision
    checkpoint = cfg.get("method", {}).get("checkpoint")
    if isinstance(checkpoint, str) and Path(checkpoint).expanduser().is_file():
        semantic["method_checkpoint_sha256"] = file_sha256(Path(checkpoint).expanduser())
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_context(cfg: dict, dataset, sam=None, clip=None) -> dict[str, Lazy]:  # noqa: ANN001
    """Everything a method or stage plugin may ask for by parameter name, built on first use
    (``sam`` / ``clip``: already-built engines to use instead, e.g. in tests).

    Order matters only for error order: SAM (and so a missing checkpoint) comes first.
    """
    # reuse: the jobs of a multirun share one SAM and one CLIP instead of reloading them.
    models = {"sam": Lazy(lambda: sam or build_model_engine(cfg["model"], cfg["weights"],
                                                            FeatureCache.from_config(cfg.get("cache")))),
              "clip": Lazy(lambda: clip or build_clip(cfg["clip"], cfg["weights"], reuse=True)),
              "class_prompts": Lazy(dataset.class_prompts),
              "top_k": Lazy(dataset.top_k_per_class)}
    stages = {"generator": Lazy(lambda: GENERATORS.build(cfg["generator"], **models)),
              "filter": Lazy(lambda: FILTERS.build(cfg["filter"], **models)),
              "retriever": Lazy(lambda: RETRIEVERS.build(cfg["retriever"], **models)),
              "refiner": Lazy(lambda: REFINERS.build(cfg["refiner"], **models))}
    return {**stages, **models}


def build_model_engine(cfg: dict, weights: str, cache: FeatureCache | None):  # noqa: ANN201
    """The engine of a ``conf/model/*.yaml`` entry (its ``engine`` key; SAM v1 when absent), reused by
    the jobs of a multirun."""
    engine = cfg.get("engine", "sam")
    if engine == "sam":
        return build_sam(cfg, weights, reuse=True, cache=cache)
    return shared_engine("sam", [cfg, weights], lambda: ENGINES.get(engine)(cfg, weights, cache))


def run(cfg: DictConfig | dict, out_dir: Path | str) -> dict:
    """Evaluate ``cfg.method`` on ``cfg.dataset`` into ``out_dir``; returns the summary dict."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    cfg = apply_tuned(cfg)  # tuned=OUT/tuned.yaml: before the fingerprint, so it tells tuned runs apart
    out_dir = Path(out_dir)
    L.seed_everything(cfg["seed"], verbose=False)
    dataset = DATASETS.build(cfg["dataset"])
    ids = dataset.ids[: cfg["limit"]] if cfg.get("limit") else dataset.ids
    fingerprint = config_fingerprint(cfg)
    store = RecordStore(out_dir)
    # Under DDP every rank runs this and gets the same list: no rank writes a record before all of
    # them have joined the process group inside trainer.predict.
    pending = pending_indices(store, ids, fingerprint, cfg["resume"])
    log.info("%d samples, %d already done, %d to run -> %s", len(ids), len(ids) - len(pending), len(pending), out_dir)
    if not pending:  # no Trainer: under SLURM/torchrun the rank comes from the environment
        return finalize(cfg, out_dir, store, ids, fingerprint, engines={}, texts_encoded=None) \
            if rank_zero_only.rank == 0 else {}

    context = build_context(cfg, dataset)
    method = METHODS.build(cfg["method"], **context)
    engines = {k: context[k]() for k in ("sam", "clip") if context[k].built}
    if cfg["weights"] == "random":
        log.warning(RANDOM_WEIGHTS_BANNER)
    texts_encoded = getattr(engines.get("clip"), "texts_encoded", 0)
    identity = {k: e.identity for k, e in engines.items()}
    logger = make_wandb_logger(cfg["logger"], out_dir, {**cfg, "weights_identity": identity},
                               tags=[cfg["method"]["name"], f"weights={cfg['weights']}"])
    writer = RecordWriter(store, cfg["save_masks"], cfg["logger"].get("overlays", 0) if logger else 0)
    trainer = L.Trainer(**cfg["trainer"], logger=logger or False, callbacks=[writer], enable_checkpointing=False)
    check_launchable(trainer)
    loader = DataLoader(Subset(dataset, pending), batch_size=1, collate_fn=list, num_workers=cfg["num_workers"])
    module = PredictModule(method, engines, cfg["fail_fast"], fingerprint, dataset.extra_metrics)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        texts_encoded = sum_after_all_ranks(trainer, texts_encoded)
    finally:  # a failed or interrupted run still leaves tables of everything finished
        # Under DDP only global rank 0 derives the tables and logs: once, from every rank's records.
        summary = finalize(cfg, out_dir, store, ids, fingerprint, engines, texts_encoded) if trainer.is_global_zero else {}
    if trainer.world_size > 1:
        log.info("rank %d of %d wrote %d samples", trainer.global_rank, trainer.world_size, writer.written)
    if logger is not None and trainer.is_global_zero:
        log_run(logger, summary, results_frame(store.read_all(ids)), writer.kept)
    return summary


def sum_after_all_ranks(trainer: L.Trainer, count: int) -> int:
    """Waits until every DDP rank has finished predicting (so all records are on disk) and sums a
    per-process work counter over the ranks; on one device it returns ``count`` unchanged.

    Lightning's predict sampler gives each rank a disjoint share of the samples (no padding
    duplicates), so per-sample counters in the records already sum correctly; this is for counters
    every process pays once, such as encoding the class prompts.
    """
    trainer.strategy.barrier("finalize")
    total = trainer.strategy.reduce(torch.tensor(count, device=trainer.strategy.root_device), reduce_op="sum")
    return int(total)


def pending_indices(store: RecordStore, ids: list[str], fingerprint: str, resume: bool) -> list[int]:
    if not resume:
        return list(range(len(ids)))
    pending = []
    for index, sample_id in enumerate(ids):
        record = store.read(sample_id)
        if record is None:
            pending.append(index)
        elif record.get("fingerprint") != fingerprint:
            raise RuntimeError(f"{store.out_dir} holds results of another configuration (sample {sample_id}: "
                               f"fingerprint {record.get('fingerprint')} != {fingerprint}); choose a new "
                               "output_dir, or resume=false to overwrite them")
    return pending


def check_launchable(trainer: L.Trainer) -> None:
    """Refuses DDP inside a local Hydra multirun (``-m`` with the basic or joblib launcher).

    Lightning starts ranks 1..N-1 by re-running the command line, which under ``-m`` re-runs the
    whole sweep in every rank and mixes up jobs (Lightning-AI/pytorch-lightning#18175). Where the
    ranks are started by the cluster (SLURM tasks via hydra/launcher=slurm, torchrun) it is fine.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally
            and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        raise ValueError("trainer=ddp cannot run inside a local multirun (-m): Lightning would re-run the whole "
                         "sweep in every rank. Run one DDP job per command, or sweep with hydra/launcher=slurm "
                         "(each job's ranks are then SLURM tasks)")


def overrides() -> list[str]:
    """The command-line overrides of this (Hydra) job, for labelling runs in reports."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def finalize(cfg: dict, out_dir: Path, store: RecordStore, ids: list[str], fingerprint: str,
             engines: dict, texts_encoded: int | None) -> dict:
    """(Re)write results.csv and summary.json from the records on disk; unchanged files are left alone."""
    records = store.read_all(ids)
    summary_path = out_dir / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    work = {"sam_encoder_passes": sum(r.get("sam_encoder_passes", 0) for r in records),
            "clip_images_encoded": sum(r.get("clip_images_encoded", 0) for r in records),
            "clip_texts_encoded": texts_encoded if texts_encoded is not None
            else previous.get("work", {}).get("clip_texts_encoded", 0)}
    summary = {**aggregate(records), "dataset": cfg["dataset"]["name"], "method": cfg["method"]["name"],
               "dataset_root": cfg["dataset"].get("root"), "roi": cfg["dataset"].get("prompts"),
               "overrides": overrides(),
               "empty_mask_convention": EMPTY_MASK_CONVENTION, "fingerprint": fingerprint, "work": work,
               "weights": cfg["weights"],
               "weights_identity": {k: e.identity for k, e in engines.items()} or previous.get("weights_identity", {}),
               "versions": package_versions(), "config": cfg}
    out_dir.mkdir(parents=True, exist_ok=True)
    if records:
        write_if_changed(out_dir / "results.csv", results_frame(records).to_csv(index=False))
    write_if_changed(summary_path, json.dumps(summary, indent=2, sort_keys=True, default=str))
    log.info("dice_mean=%s iou_mean=%s n_ok=%d n_failed=%d", summary["dice_mean"], summary["iou_mean"],
             summary["n_ok"], summary["n_failed"])
    return summary
