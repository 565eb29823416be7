"""A whole evaluation run: config → dataset, models, method → Lightning predict → outputs."""
from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from salip_bench.datasets.base import check_unique_ids
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.storage.feature_cache import FeatureCache
from salip_bench.evaluation.records import CRASH_FAILURE, RecordStore, results_frame
from salip_bench.evaluation.summary import Invocation, RunInfo, write_tables
from salip_bench.evaluation.run_lock import RunLock
from salip_bench.evaluation.wandb_log import log_run, make_wandb_logger
from salip_bench.evaluation.lightning_module import PredictModule, RecordWriter
from salip_bench.evaluation.overlays import first_overlays
from salip_bench.evaluation.memory import MemoryGuard
from salip_bench.evaluation.extra_metrics import extra_metrics
from salip_bench.evaluation.fingerprint import config_fingerprint
from salip_bench.evaluation.job import Job, check_launchable
from salip_bench.metrics import NSD_TOLERANCE_MM
from salip_bench.engines.clip import build_clip
from salip_bench.engines.shared import shared_engine
from salip_bench.engines.weights import RANDOM_WEIGHTS_BANNER, WeightsNotFoundError
from salip_bench.registry import (DATASETS, ENGINES, FILTERS, GENERATORS, METHODS, REFINERS, RETRIEVERS, Lazy,
                                  PluginError)
from salip_bench.evaluation.tuned import apply_tuned
from salip_bench.evaluation.validation import ConfigError, check_method_inputs, resume_settings, validate

log = logging.getLogger(__name__)

PACKAGES = ("salip-bench", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "segment-anything", "sam2",
            "open_clip_torch", "torchmetrics", "monai", "wandb", "numpy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_context(cfg: dict, dataset, sam=None, clip=None, refiner_sam=None) -> dict[str, Lazy]:  # noqa: ANN001
    """Everything a method or stage plugin may ask for by parameter name, built on first use
    (``sam`` / ``clip`` / ``refiner_sam``: already-built engines to use instead, e.g. in tests).

    ``sam`` is the engine of ``cfg["model"]``; ``refiner_sam`` that of ``cfg["refiner_model"]``
    (``model@refiner_model=NAME``) or, when that is unset or the same entry, the very same object,
    so the refiner reuses the generator's embeddings exactly when the two share an engine. The
    refiner stage receives ``refiner_sam`` as its ``sam``. Order matters only for error order: SAM
    (and so a missing checkpoint) comes first.
    """
    def refiner_engine():  # noqa: ANN202
        if refiner_sam is not None:
            return refiner_sam
        if not cfg.get("refiner_model") or cfg["refiner_model"] == cfg["model"]:
            return models["sam"]()
        return build_engine(cfg, "refiner_model")

    settings = DatasetSettings.from_config(cfg["dataset"])  # what to retrieve: the config's, not the dataset's
    # reuse: the jobs of a multirun share each engine and CLIP instead of reloading them.
    models = {"sam": Lazy(lambda: sam or build_engine(cfg, "model")),
              "refiner_sam": Lazy(refiner_engine),
              "clip": Lazy(lambda: clip or build_clip(cfg["clip"], cfg["weights"], reuse=True,
                                                      cache=FeatureCache.from_config(cfg.get("cache")))),
              "class_prompts": Lazy(settings.class_prompts),
              "top_k": Lazy(settings.top_k_per_class)}
    stages = {"generator": Lazy(lambda: GENERATORS.build(cfg["generator"], **models)),
              "filter": Lazy(lambda: FILTERS.build(cfg["filter"], **models)),
              "retriever": Lazy(lambda: RETRIEVERS.build(cfg["retriever"], **models)),
              "refiner": Lazy(lambda: REFINERS.build(cfg["refiner"], **{**models, "sam": models["refiner_sam"]}))}
    return {**stages, **models}


def build_engine(cfg: dict, key: str):  # noqa: ANN201
    """The engine of the model entry ``cfg[key]`` (``model`` or ``refiner_model``), through the
    ``ENGINES`` registry; the previous multirun job's engine when it came from the same entry."""
    entry, weights = cfg[key], cfg["weights"]

    def build():  # noqa: ANN202
        try:
            return ENGINES.get(entry.get("engine", "sam"))(entry, weights, None)
        except WeightsNotFoundError as err:
            if key == "model":
                raise
            message = str(err).replace("model.checkpoint", f"{key}.checkpoint")
            raise WeightsNotFoundError(f"model@{key}={entry['name']}: {message}") from None

    engine = shared_engine("sam" if key == "model" else key, [entry, weights], build)
    if hasattr(engine, "use_cache"):  # SAM v1 keeps embeddings and proposals on disk
        engine.use_cache(FeatureCache.from_config(cfg.get("cache")))
    return engine


STAGE_ENGINES = {"generator": "sam", "retriever": "clip", "refiner": "refiner_sam"}  # stage -> context key


def stage_engines(context: dict[str, Lazy]) -> dict[str, str]:
    """Which context engine each built stage used (``method`` for one the method itself asked for)."""
    used = {stage: key for stage, key in STAGE_ENGINES.items() if context[stage].built}
    for key in ("sam", "clip"):
        if context[key].built and key not in used.values():
            used.setdefault("method", key)
    return used


def engine_report(cfg: dict, engines: dict, stages: dict[str, str]) -> tuple[dict, dict]:
    """Per engine (by model name): its registered engine, identity, counters and stages; and stage -> name."""
    entries = {"sam": cfg.get("model"), "refiner_sam": cfg.get("refiner_model") or cfg.get("model"),
               "clip": cfg.get("clip")}
    names: dict[int, str] = {}
    report: dict[str, dict] = {}
    for key, engine in engines.items():
        if id(engine) in names:
            continue
        name = str(engine.identity.get("model", key))
        name = name if name not in report else f"{name}@{key}"
        names[id(engine)] = name
        registered = (entries.get(key) or {}).get("engine", "open_clip" if key == "clip" else "sam")
        report[name] = {"engine": registered, "identity": engine.identity, "counters": engine.counters(),
                        "stages": []}
    by_stage = {stage: names[id(engines[key])] for stage, key in stages.items() if key in engines}
    for stage, name in by_stage.items():
        report[name]["stages"].append(stage)
    return report, by_stage


def run(cfg: DictConfig | dict, out_dir: Path | str, job: Job | None = None) -> dict:
    """Evaluate ``cfg.method`` on ``cfg.dataset`` into ``out_dir``; returns the summary dict.

    One run per ``out_dir`` at a time (:class:`~salip_bench.evaluation.run_lock.RunLock`, held by global
    rank 0); a second one raises :class:`~salip_bench.evaluation.run_lock.RunLockedError`.

    Args:
        cfg: the run config (a DictConfig is resolved).
        out_dir: the run's folder.
        job: the launching command, read from Hydra by the entry points (None: a library call, with no
            overrides and no multirun).
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    cfg = apply_tuned(cfg)  # tuned=OUT/tuned.yaml: before the fingerprint, so it tells tuned runs apart
    validate(cfg)  # the command line checked it already; tuned values and library callers are checked here
    check_method_inputs(METHODS.get(cfg["method"]["name"]), cfg["dataset"])  # the class's declared inputs
    out_dir = Path(out_dir)
    L.seed_everything(cfg["seed"], verbose=False)
    dataset = build_dataset(cfg["dataset"])
    refuse_unlabelled(cfg["method"]["name"], dataset)
    ids = dataset.ids[: cfg["limit"]] if cfg.get("limit") else dataset.ids
    if rank_zero_only.rank != 0:  # the ranks Lightning or the cluster started: rank 0 holds the lock
        return _run(cfg, out_dir, dataset, ids, job)
    with RunLock(out_dir):
        return _run(cfg, out_dir, dataset, ids, job)


def build_dataset(cfg: dict):  # noqa: ANN201 - a SegmentationDataset
    """The configured dataset; a setting it rejects (no such folder, no images, bad ids) is a
    :class:`~salip_bench.evaluation.validation.ConfigError` naming the dataset."""
    try:
        extra_metrics(DatasetSettings.from_config(cfg).extra_metrics)  # a bad max_side or metric name fails here
        dataset = DATASETS.build(cfg)
        check_unique_ids(dataset.ids)
    except PluginError:
        raise
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"dataset {cfg.get('name')}: {err}") from err
    return dataset


def _run(cfg: dict, out_dir: Path, dataset, ids: list[str], job: Job | None) -> dict:  # noqa: ANN001
    fingerprint = config_fingerprint(cfg)
    store = RecordStore(out_dir)
    resume = resume_settings(cfg["resume"])
    if resume["enabled"] and rank_zero_only.rank == 0:
        for sample_id in store.record_crashes(ids):
            log.warning("sample %s: the last run died while evaluating it; recorded as failed", sample_id)
    # Under DDP every rank runs this and gets the same list: no rank writes a record before all of
    # them have joined the process group inside trainer.predict.
    pending = pending_indices(store, ids, fingerprint, resume)
    log.info("%d samples, %d already done, %d to run -> %s", len(ids), len(ids) - len(pending), len(pending), out_dir)
    if not pending:  # no Trainer: under SLURM/torchrun the rank comes from the environment
        return finalize(cfg, out_dir, store, ids, fingerprint, engines={}, texts_encoded=None, dataset=dataset,
                        job=job) \
            if rank_zero_only.rank == 0 else {}

    context = build_context(cfg, dataset)
    method = METHODS.build(cfg["method"], **context)
    engines = {k: context[k]() for k in ("sam", "refiner_sam", "clip") if context[k].built}
    stages = stage_engines(context)
    if cfg["weights"] == "random":
        log.warning(RANDOM_WEIGHTS_BANNER)
    texts_encoded = getattr(engines.get("clip"), "texts_encoded", 0)
    identity = {k: e.identity for k, e in engines.items()}
    logger = make_wandb_logger(cfg["logger"], out_dir, {**cfg, "weights_identity": identity},
                               tags=[cfg["method"]["name"], f"weights={cfg['weights']}"])
    overlays = cfg["logger"].get("overlays", 0) if logger else 0
    # With masks on disk the overlays are read back after the run (every rank's share); only
    # without them does the writer keep its own first samples in memory.
    writer = RecordWriter(store, cfg["save_masks"], 0 if cfg["save_masks"] else overlays)
    trainer = L.Trainer(**cfg["trainer"], logger=logger or False, callbacks=[writer], enable_checkpointing=False)
    check_launchable(trainer, job)
    loader = DataLoader(Subset(dataset, pending), batch_size=1, collate_fn=list, num_workers=cfg["num_workers"])
    memory = MemoryGuard(cfg.get("memory_limit_gb"), cfg["generator"] if context["generator"].built else None)
    columns = extra_metrics(DatasetSettings.from_config(cfg["dataset"]).extra_metrics)
    module = PredictModule(method, engines, cfg["fail_fast"], fingerprint, columns, nsd_tolerance(cfg),
                           max_side=cfg["dataset"].get("max_side"), memory=memory)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        texts_encoded = sum_after_all_ranks(trainer, texts_encoded)
    finally:  # a failed or interrupted run still leaves tables of everything finished
        store.clear_own_markers([ids[i] for i in pending])  # an interrupted sample is pending, not crashed
        # Under DDP only global rank 0 derives the tables and logs: once, from every rank's records.
        summary = (finalize(cfg, out_dir, store, ids, fingerprint, engines, texts_encoded, stages, dataset, job)
                   if trainer.is_global_zero else {})
    if trainer.world_size > 1:
        log.info("rank %d of %d wrote %d samples", trainer.global_rank, trainer.world_size, writer.written)
    if logger is not None and trainer.is_global_zero:
        # The first overlays of the whole run (every DDP rank's share), read back from disk.
        kept = first_overlays(dataset, ids, store, overlays) if cfg["save_masks"] else writer.kept
        log_run(logger, summary, results_frame(store.read_all(ids)), kept)
    return summary


def nsd_tolerance(cfg: dict) -> float:
    return float((cfg.get("metrics") or {}).get("nsd_tolerance_mm", NSD_TOLERANCE_MM))


def refuse_unlabelled(method_name: str, dataset) -> None:  # noqa: ANN001
    """Methods that read the ground truth (``needs_ground_truth``) cannot run on unlabelled data."""
    method_class = METHODS.get(method_name)
    if getattr(method_class, "needs_ground_truth", False) and not getattr(dataset, "labelled", True):
        raise ConfigError(f"method={method_name} prompts with the ground truth, but this dataset has no masks "
                         "(mask_dir / mask_pattern is null); use a zero-shot method such as method=salip")


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


def pending_indices(store: RecordStore, ids: list[str], fingerprint: str, resume: dict | bool) -> list[int]:
    """Indices of the samples still to run. ``resume``: see :func:`salip_bench.evaluation.validation.resume_settings`.

    A failed sample is run again with ``retry_failed``; one the process died in (its record says
    so, or rank 0 is recording it from its marker right now) only with ``retry_crashed``.
    """
    resume = resume_settings(resume)
    if not resume["enabled"]:
        return list(range(len(ids)))
    pending = []
    for index, sample_id in enumerate(ids):
        record = store.read(sample_id)
        if record is None:
            if resume["retry_crashed"] or not store.marker_path(sample_id).is_file():
                pending.append(index)
        elif record.get("fingerprint") != fingerprint:
            raise RuntimeError(f"{store.out_dir} holds results of another configuration (sample {sample_id}: "
                               f"fingerprint {record.get('fingerprint')} != {fingerprint}); choose a new "
                               "output_dir, or resume=false to overwrite them")
        elif record.get("status") == "failed":
            crashed = str(record.get("failure", "")).startswith(CRASH_FAILURE)
            if resume["retry_crashed"] if crashed else resume["retry_failed"]:
                pending.append(index)
    return pending


def finalize(cfg: dict, out_dir: Path, store: RecordStore, ids: list[str], fingerprint: str,
             engines: dict, texts_encoded: int | None, stages: dict[str, str] | None = None,
             dataset=None, job: Job | None = None) -> dict:  # noqa: ANN001
    """(Re)write results.csv and summary.json from the records on disk (and, for a volume dataset,
    ``volumes/<id>.nii.gz`` with per-volume 3D NSD / HD95); unchanged files are left alone.
    See :func:`salip_bench.evaluation.summary.write_tables`.

    stages: which ``engines`` key each stage used (:func:`stage_engines`), for the per-engine report;
    job: the launching command, whose overrides the summary keeps (None: a library call, none)."""
    invocation = Invocation(texts_encoded)
    if engines:  # without engines (every sample done) the engine keys are the last evaluating run's
        invocation.weights_identity = {k: e.identity for k, e in engines.items()}
        invocation.engines, invocation.stage_engines = engine_report(cfg, engines, stages or {})
    info = RunInfo(cfg, fingerprint, list((job or Job()).overrides), package_versions(), nsd_tolerance(cfg), dataset)
    return write_tables(info, out_dir, store, ids, invocation).to_dict()
