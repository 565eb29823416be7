"""A run's tables from its records: ``results.csv`` and ``summary.json`` (and, for a volume dataset
with saved masks, ``volumes/<id>.nii.gz`` with per-volume 3D NSD / HD95).

Everything in the summary is derived from the records on disk and this invocation's state, except
the few keys that describe the engines of the last invocation that evaluated samples
(:data:`~salip_bench.evaluation.schema.FROM_LAST_EVALUATING_RUN`): an invocation that resumes with
every sample done builds no engine, so those exist only in the previous ``summary.json`` and are
carried over from it, by name, and nothing else is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip_bench.datasets.settings import DatasetSettings
from salip_bench.evaluation.aggregate import add_volume_scores, aggregate_records
from salip_bench.evaluation.extra_metrics import extra_metric_columns
from salip_bench.evaluation.nifti_out import is_volume_dataset, write_volumes
from salip_bench.evaluation.organs import dataset_facts
from salip_bench.evaluation.records import RecordStore, results_frame
from salip_bench.evaluation.risk_coverage import quality_summary
from salip_bench.evaluation.schema import CLIP_TEXTS_ENCODED, SAMPLE_COUNTERS, SampleRecord, Summary
from salip_bench.metrics import BOUNDARY_CONVENTIONS, EMPTY_MASK_CONVENTION
from salip_bench.storage.files import write_if_changed

log = logging.getLogger(__name__)


@dataclass
class Invocation:
    """What this invocation knows about the engines it ran with; None where it built none.

    Args:
        texts_encoded: class-prompt sentences CLIP encoded (summed over DDP ranks).
        weights_identity: per engine key (``sam``, ``clip``, ...) its identity.
        engines: per engine name its registered engine, identity, counters and stages.
        stage_engines: per stage the engine name it used.
    """

    texts_encoded: int | None = None
    weights_identity: dict[str, Any] | None = None
    engines: dict[str, Any] | None = None
    stage_engines: dict[str, str] | None = None

    def complete(self) -> bool:
        return None not in (self.texts_encoded, self.weights_identity, self.engines, self.stage_engines)

    def carry_over(self, previous: Summary) -> Invocation:
        """This invocation's values, the previous summary's where it has none (see the module docstring)."""
        def pick(mine: Any, theirs: Any) -> Any:
            return mine if mine is not None else theirs

        return Invocation(pick(self.texts_encoded, previous.work.get(CLIP_TEXTS_ENCODED, 0)),
                          pick(self.weights_identity, previous.weights_identity),
                          pick(self.engines, previous.engines), pick(self.stage_engines, previous.stage_engines))


@dataclass
class RunInfo:
    """Facts of the run the records cannot tell (passed in by the harness).

    Args:
        cfg: the resolved configuration; fingerprint: its hash.
        overrides: the Hydra command-line overrides; versions: package versions.
        nsd_tolerance: NSD tolerance in the dataset's spacing unit.
        dataset: the built dataset (its spacing and volume layout), or None.
    """

    cfg: dict[str, Any]
    fingerprint: str
    overrides: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    nsd_tolerance: float = 2.0
    dataset: Any = None


def read_summary(path: Path) -> Summary | None:
    """The summary at ``path``, or None when there is none (or it is unreadable: nothing to carry)."""
    try:
        return Summary.from_json(path.read_text())
    except (OSError, ValueError):
        return None


def build_summary(info: RunInfo, records: list[SampleRecord], invocation: Invocation,
                  volumes: dict[str, dict] | None = None) -> Summary:
    """The run's :class:`Summary` from its records.

    Args:
        info: the run's configuration and environment.
        records: every finished record of the run.
        invocation: complete (see :meth:`Invocation.carry_over`).
        volumes: the NIfTI writer's per-volume scores, for a volume dataset with saved masks.
    """
    cfg, dataset = info.cfg, info.dataset
    summary = aggregate_records(records)
    if volumes is not None:
        add_volume_scores(summary, volumes)
    summary.dataset, summary.method = cfg["dataset"]["name"], cfg["method"]["name"]
    summary.dataset_root, summary.roi = cfg["dataset"].get("root"), cfg["dataset"].get("prompts")
    summary.overrides, summary.fingerprint, summary.weights = info.overrides, info.fingerprint, cfg["weights"]
    summary.conventions = {"empty_mask_convention": EMPTY_MASK_CONVENTION, "boundary_conventions": BOUNDARY_CONVENTIONS,
                           "nsd_tolerance": info.nsd_tolerance,
                           "spacing_unit": getattr(dataset, "spacing_unit", None),
                           "spacing_source": spacing_source(dataset)}
    # Per-sample counters sum over every invocation's records; the class prompts are encoded once per
    # evaluating invocation.
    summary.work = {**{k: sum(r.counters.get(k, 0) for r in records) for k in SAMPLE_COUNTERS},
                    CLIP_TEXTS_ENCODED: invocation.texts_encoded}
    summary.weights_identity = invocation.weights_identity or {}
    summary.engines, summary.stage_engines = invocation.engines or {}, invocation.stage_engines or {}
    summary.versions, summary.config = info.versions, cfg
    summary.extra.update(dataset_facts(dataset, records, summary, cfg["dataset"].get("prompts")))
    quality = quality_summary(records, cfg)  # risk-coverage numbers and abstention
    if quality is not None:
        summary.extra["quality"] = quality
    return summary


def write_tables(info: RunInfo, out_dir: Path, store: RecordStore, ids: list[str],
                 invocation: Invocation) -> Summary:
    """(Re)write results.csv and summary.json (and volumes/) from the records on disk; unchanged
    files are left alone.

    Args:
        info: the run's configuration and environment.
        out_dir: the run's output directory.
        store: its records; ids: the run's sample ids, in order.
        invocation: this invocation's engines; what it lacks is carried over from the previous summary.
    """
    records = store.load_all(ids)
    summary_path = out_dir / "summary.json"
    lost = []
    if not invocation.complete():
        previous = read_summary(summary_path)
        if previous is None and records:  # nothing to carry: say so rather than write empty values as known
            lost = [k for k in ("weights_identity", "engines", "stage_engines") if getattr(invocation, k) is None]
            log.warning("%s: summary.json was missing or unreadable, and no sample was run now: %s no longer "
                        "known (run with resume=false to evaluate again)", out_dir, ", ".join(lost))
        elif previous is not None:  # an earlier rebuild lost them: still not known unless this invocation knows
            lost = [k for k in (previous.extra.get("not_known") or {}).get("keys", [])
                    if getattr(invocation, k, 0) is None]
        invocation = invocation.carry_over(previous or Summary())
    volumes = None
    if info.dataset is not None and is_volume_dataset(info.dataset) and info.cfg["save_masks"]:
        volumes = write_volumes(info.dataset, out_dir, [r.to_dict() for r in records], info.nsd_tolerance)
    summary = build_summary(info, records, invocation, volumes)
    if lost:
        summary.extra["not_known"] = {"keys": lost, "why": "summary.json was missing or unreadable when the tables "
                                      "were rebuilt from the records, and no sample was run then"}
    out_dir.mkdir(parents=True, exist_ok=True)
    if records:
        columns = extra_metric_columns(DatasetSettings.from_config(info.cfg["dataset"]).extra_metrics)
        write_if_changed(out_dir / "results.csv", results_frame(records, columns).to_csv(index=False))
    write_if_changed(summary_path, summary.to_json())
    return summary


def spacing_source(dataset: Any) -> str | None:
    """Where NSD's tolerance and HD95 get their unit, in words for summary.json."""
    if dataset is None:
        return None
    if getattr(dataset, "spacing_unit", "pixel") == "pixel":
        return "no pixel size known: 1 pixel = 1 unit (NSD tolerance and HD95 in pixels)"
    if is_volume_dataset(dataset):
        return "NIfTI voxel sizes (mm)" if not hasattr(dataset, "cases") else "NIfTI voxel sizes / DICOM geometry (mm)"
    if getattr(dataset, "pixel_size_csv", None):
        return f"pixel sizes (mm) from {dataset.pixel_size_csv}"
    return "dataset.spacing (mm)"
