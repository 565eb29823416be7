"""A whole evaluation run: config → dataset, models, method → Lightning predict → outputs.

:func:`run` is the sequence of steps; each step lives in its own module: the resume fingerprint
(:mod:`~salip_bench.evaluation.fingerprint`), resume (:mod:`~salip_bench.evaluation.resume`), the
engine wiring (:mod:`~salip_bench.evaluation.context`), the predict loop
(:mod:`~salip_bench.evaluation.predict_loop`) and the tables (:mod:`~salip_bench.evaluation.finalize`).
The names other modules, tests and benchmarks import from here stay importable from here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from salip_bench.datasets.base import check_unique_ids
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.evaluation.context import build_context, build_engine, built_engines, engine_report, stage_engines
from salip_bench.evaluation.extra_metrics import extra_metrics
from salip_bench.evaluation.finalize import RunTarget, finalize, nsd_tolerance, package_versions
from salip_bench.evaluation.fingerprint import config_fingerprint
from salip_bench.evaluation.interrupts import deferred, stop_on_signals
from salip_bench.evaluation.job import Job, check_launchable
from salip_bench.evaluation.predict_loop import Loop, Member, predict, predict_module, sum_after_all_ranks
from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.resume import pending_indices, record_crashes
from salip_bench.evaluation.run_lock import RunLock
from salip_bench.evaluation.tuned import apply_tuned
from salip_bench.evaluation.validation import ConfigError, check_method_inputs, validate
from salip_bench.qc.build import check_qc
from salip_bench.registry import DATASETS, METHODS, PluginError

__all__ = ["Job", "build_context", "build_dataset", "build_engine", "check_launchable", "config_fingerprint",
           "engine_report", "evaluate", "finalize", "nsd_tolerance", "open_targets", "package_versions",
           "pending_indices",
           "refuse_unlabelled", "run", "stage_engines", "sum_after_all_ranks"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig | dict, out_dir: Path | str, job: Job | None = None) -> dict:
    """Evaluate ``cfg.method`` on ``cfg.dataset`` into ``out_dir``; returns the summary dict.

    One run per ``out_dir`` at a time (:class:`~salip_bench.evaluation.run_lock.RunLock`, held by global
    rank 0); a second one raises :class:`~salip_bench.evaluation.run_lock.RunLockedError`. A stop signal
    raises :class:`~salip_bench.evaluation.interrupts.RunInterrupted` after the tables are written.

    Args:
        cfg: the run config (a DictConfig is resolved).
        out_dir: the run's folder.
        job: the launching command, read from Hydra by the entry points (None: a library call, with no
            overrides and no multirun).
    """
    return evaluate(open_targets([cfg], [out_dir], job), plan_run)[0]


def open_targets(configs: list[DictConfig | dict], out_dirs: list[Path | str],
                 job: Job | None = None) -> list[RunTarget]:
    """The runs of ``configs`` (one each into ``out_dirs``) over one dataset, the first config's: checked
    configs (``tuned=`` applied), seeded, the dataset built with unique ids, and their fingerprints.

    Args:
        configs: run configs that differ at most in what does not change the dataset (tuning's trials).
        out_dirs: one folder per config.
        job: the launching command (None: a library call).
    """
    configs = [checked_config(cfg) for cfg in configs]
    L.seed_everything(configs[0]["seed"], verbose=False)
    dataset = build_dataset(configs[0]["dataset"])
    for cfg in configs:
        refuse_unlabelled(cfg["method"]["name"], dataset)
    ids = dataset.ids[: configs[0]["limit"]] if configs[0].get("limit") else dataset.ids
    return [RunTarget(cfg, Path(d), RecordStore(Path(d)), dataset, ids, config_fingerprint(cfg), job or Job())
            for cfg, d in zip(configs, out_dirs)]


def evaluate(targets: list[RunTarget], plan: Callable[[list[RunTarget], list[list[int]]], Loop]) -> list[dict]:
    """Hold every target's folder, settle its crash markers, and predict what is pending in one loop
    (:func:`~salip_bench.evaluation.predict_loop.predict`); returns the summaries in order.

    Args:
        targets: the runs (:func:`open_targets`).
        plan: builds the engines, methods and modules of the loop for the targets and their pending
            indices (called only when something is pending).
    """
    with ExitStack() as held, stop_on_signals():
        if rank_zero_only.rank == 0:  # the ranks Lightning or the cluster started: rank 0 holds the locks
            for target in targets:
                held.enter_context(RunLock(target.out_dir))
        pending = []
        for target in targets:
            record_crashes(target.store, target.ids, target.cfg["resume"])
            # Under DDP every rank runs this and gets the same list: no rank writes a record before all of
            # them have joined the process group inside trainer.predict.
            pending.append(pending_indices(target.store, target.ids, target.fingerprint, target.cfg["resume"]))
        for target, todo in zip(targets, pending):
            log.info("%d samples, %d already done, %d to run -> %s", len(target.ids), len(target.ids) - len(todo),
                     len(todo), target.out_dir)
        if not any(pending):  # no Trainer: under SLURM/torchrun the rank comes from the environment
            with deferred():
                return [t.finalize() if rank_zero_only.rank == 0 else {} for t in targets]
        return predict(plan(targets, pending))


def plan_run(targets: list[RunTarget], pending: list[list[int]]) -> Loop:
    """The loop of a normal run: its context's engines and its method, one member.

    Args:
        targets: the one run; pending: its pending indices.
    """
    (target,), (todo,) = targets, pending
    context = build_context(target.cfg, target.dataset)
    method = METHODS.build(target.cfg["method"], **context)
    engines = built_engines(context)
    module = predict_module(target.cfg, method, engines, target.fingerprint, context["generator"].built)
    texts = getattr(engines.get("clip"), "texts_encoded", 0)
    return Loop([Member(target, todo, module, stage_engines(context), texts)], engines)


def checked_config(cfg: DictConfig | dict) -> dict:
    """The run config as a plain dict with ``tuned=`` applied, checked as the command line checks it,
    plus the dataset settings the method's class declares it needs.

    Args:
        cfg: the run config (a DictConfig is resolved).

    Raises:
        ConfigError: the first bad setting.
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    cfg = apply_tuned(cfg)  # tuned=OUT/tuned.yaml: before the fingerprint, so it tells tuned runs apart
    validate(cfg)  # the command line checked it already; tuned values and library callers are checked here
    check_method_inputs(METHODS.get(cfg["method"]["name"]), cfg["dataset"])
    check_qc(cfg)  # an estimator that fits the method, before any model is loaded
    return cfg


def build_dataset(cfg: dict):  # a SegmentationDataset
    """The configured dataset; a setting it rejects (no such folder, no images, bad ids) is a
    :class:`~salip_bench.evaluation.validation.ConfigError` naming the dataset.

    Args:
        cfg: the dataset config.
    """
    try:
        extra_metrics(DatasetSettings.from_config(cfg).extra_metrics)  # a bad max_side or metric name fails here
        dataset = DATASETS.build(cfg)
        check_unique_ids(dataset.ids)
    except PluginError:
        raise
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"dataset {cfg.get('name')}: {err}") from err
    return dataset


def refuse_unlabelled(method_name: str, dataset) -> None:
    """Methods that read the ground truth (``needs_ground_truth``) cannot run on unlabelled data.

    Args:
        method_name: the registered method.
        dataset: the built dataset (``labelled`` False: it has no masks).
    """
    method_class = METHODS.get(method_name)
    if getattr(method_class, "needs_ground_truth", False) and not getattr(dataset, "labelled", True):
        raise ConfigError(f"method={method_name} prompts with the ground truth, but this dataset has no masks "
                          "(mask_dir / mask_pattern is null); use a zero-shot method such as method=salip")
