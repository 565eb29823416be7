"""``summary.json``'s facts about organs and inputs: every metric per organ (with per-volume 3D scores),
absent organs counted (empty references, false-positive slices), the CT window used, whether the run
read labels to choose its samples (``uses_labels``), and where each organ's sentences came from."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from salip_bench.evaluation.aggregate import sample_stats
from salip_bench.evaluation.schema import VOLUME_METRICS, SampleRecord, Summary, as_record
from salip_bench.metrics import BOUNDARY_CONVENTIONS, EMPTY_MASK_CONVENTION
from salip_bench.prompts.organs import organ_prompts

# Metrics Reloaded's question for a slice whose reference is empty: one stated rule per metric.
EMPTY_REFERENCE_RULES = {"dice": EMPTY_MASK_CONVENTION.replace("GT", "reference"),
                         "iou": EMPTY_MASK_CONVENTION.replace("GT", "reference"),
                         **{k: v.replace("GT", "reference") for k, v in BOUNDARY_CONVENTIONS.items()},
                         "counted": "per organ: n_empty_reference (slices whose reference is empty) and "
                                    "n_false_positive_slices (a non-empty prediction on an empty reference)"}


def per_organ(records: Sequence[SampleRecord | dict], summary: Summary) -> dict[str, dict[str, Any]]:
    """{organ: statistics of its samples + empty-reference counts + its volumes' 3D means}.

    Args:
        records: every record of the run.
        summary: the run's summary so far (its ``per_volume`` keys ``<case>/<organ>``).
    """
    rows = [as_record(r) for r in records]
    organs = list(dict.fromkeys(r.meta.get("organ") for r in rows if r.meta.get("organ")))
    out: dict[str, dict[str, Any]] = {}
    for organ in organs:
        mine = [r for r in rows if r.meta.get("organ") == organ]
        entry = sample_stats(mine).to_dict()
        scored = [r.to_dict() for r in mine if r.ok and r.labelled]
        empty = [d for d in scored if d.get("gt_area") == 0]
        entry["n_empty_reference"] = len(empty)
        entry["n_false_positive_slices"] = sum(1 for d in empty if (d.get("pred_area") or 0) > 0)
        volumes = {k: v for k, v in (summary.per_volume or {}).items() if k.endswith(f"/{organ}")}
        for metric in VOLUME_METRICS:
            values = [v.value(metric) for v in volumes.values() if v.value(metric) is not None]
            entry[f"{metric}_mean"] = sum(values) / len(values) if values else None
        entry["n_volumes"] = len(volumes)
        out[organ] = entry
    return out


def dataset_facts(dataset: Any, records: Sequence[SampleRecord | dict], summary: Summary,
                  prompts: str | None) -> dict[str, Any]:
    """The keys this module adds to ``summary.json`` (none for a dataset without organs, windows or skip_empty).

    Args:
        dataset: the built dataset, or None.
        records: every record of the run; summary: the summary so far.
        prompts: ``dataset.prompts`` (where organ sentences are looked up).
    """
    facts: dict[str, Any] = {}
    if dataset is None:
        return facts
    facts["uses_labels"] = bool(getattr(dataset, "skip_empty", False))
    windows = getattr(dataset, "windows", None)
    if windows:
        distinct = {str(w) for w in windows.values()}
        facts["window"] = next(iter(windows.values())) if len(distinct) == 1 else dict(windows)
    organs = getattr(dataset, "organ_names", None)
    if organs:
        facts["per_organ"] = per_organ(records, summary)
        facts["prompt_source"] = organ_prompts(organs, prompts, quiet=True)[1]
        facts["empty_reference_rules"] = EMPTY_REFERENCE_RULES
    return facts
