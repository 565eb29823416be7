"""Ending a run: its tables (``results.csv``, ``summary.json``) from the records on disk, with what this
invocation knows about its engines, its environment and the command that started it."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from salip_bench.evaluation.context import engine_report
from salip_bench.evaluation.job import Job
from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.summary import Invocation, RunInfo, write_tables
from salip_bench.metrics import NSD_TOLERANCE_MM

PACKAGES = ("salip-bench", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "segment-anything", "sam2",
            "open_clip_torch", "torchmetrics", "monai", "wandb", "numpy")


def package_versions() -> dict[str, str]:
    """Python's and each of :data:`PACKAGES`' installed version (``not installed`` where absent)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def nsd_tolerance(cfg: dict) -> float:
    """NSD's tolerance (``metrics.nsd_tolerance_mm``, in the dataset's spacing unit).

    Args:
        cfg: the resolved run config.
    """
    return float((cfg.get("metrics") or {}).get("nsd_tolerance_mm", NSD_TOLERANCE_MM))


def finalize(cfg: dict, out_dir: Path, store: RecordStore, ids: list[str], fingerprint: str,
             engines: dict, texts_encoded: int | None, stages: dict[str, str] | None = None,
             dataset=None, job: Job | None = None) -> dict:
    """(Re)write results.csv and summary.json from the records on disk (and, for a volume dataset,
    ``volumes/<id>.nii.gz`` with per-volume 3D NSD / HD95); unchanged files are left alone.
    See :func:`salip_bench.evaluation.summary.write_tables`.

    Args:
        cfg: the resolved run config; out_dir: the run's folder; store: its records.
        ids: the run's sample ids, in order; fingerprint: the configuration's hash.
        engines: the engines this invocation built, by context key (none: every sample was done, and
            the engine keys are the last evaluating run's).
        texts_encoded: class-prompt sentences CLIP encoded (None: as the previous summary says).
        stages: which ``engines`` key each stage used (:func:`~salip_bench.evaluation.context.stage_engines`).
        dataset: the built dataset (its spacing and volume layout), or None.
        job: the launching command, whose overrides the summary keeps (None: a library call, none).

    Returns:
        The summary, as ``summary.json`` holds it.
    """
    invocation = Invocation(texts_encoded)
    if engines:
        invocation.weights_identity = {k: e.identity for k, e in engines.items()}
        invocation.engines, invocation.stage_engines = engine_report(cfg, engines, stages or {})
    overrides = list((job or Job()).overrides)
    info = RunInfo(cfg, fingerprint, overrides, package_versions(), nsd_tolerance(cfg), dataset)
    return write_tables(info, out_dir, store, ids, invocation).to_dict()


@dataclass
class RunTarget:
    """What one run evaluates and where it writes: everything :func:`finalize` needs besides the engines.

    Args:
        cfg: the resolved run config.
        out_dir: the run's folder; store: its records.
        dataset: the built dataset; ids: the sample ids of this run, in order.
        fingerprint: the configuration's hash.
        job: the launching command.
    """

    cfg: dict
    out_dir: Path
    store: RecordStore
    dataset: Any
    ids: list[str]
    fingerprint: str
    job: Job = field(default_factory=Job)

    def finalize(self, engines: dict | None = None, texts_encoded: int | None = None,
                 stages: dict[str, str] | None = None) -> dict:
        """:func:`finalize` of this run.

        Args:
            engines: the engines this invocation built (None: none, every sample was done).
            texts_encoded: class-prompt sentences CLIP encoded (None: as the previous summary says).
            stages: which ``engines`` key each stage used.
        """
        return finalize(self.cfg, self.out_dir, self.store, self.ids, self.fingerprint, engines or {},
                        texts_encoded, stages, self.dataset, self.job)
