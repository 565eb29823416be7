"""Aggregates over per-sample records: per-sample score statistics, per volume (3D Dice of the
stacked slices) and per domain (mean over its volumes, as the paper's Table 1)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from salip_bench.evaluation.schema import (
    BOUNDARY_METRICS,
    CONFUSION,
    METRICS,
    SAMPLE_COUNTERS,
    SampleRecord,
    Stats,
    Summary,
    VolumeScores,
    as_record,
)
from salip_bench.metrics import dice_iou_from_counts


def sample_stats(records: Sequence[SampleRecord | dict]) -> Stats:
    """Counts and mean/std/median of each score over the ok samples where it is defined;
    ``n_unlabelled`` ok samples had no ground truth, ``<metric>_n_undefined`` labelled ones no value
    (HD95 with exactly one empty mask): both are counted, not dropped silently.

    Args:
        records: the samples in scope (failed ones included: they are counted).
    """
    records = [as_record(r) for r in records]
    ok = [r for r in records if r.ok]
    labelled = [r for r in ok if r.labelled]
    stats = Stats(n_total=len(records), n_ok=len(ok), n_failed=len(records) - len(ok),
                  n_unlabelled=len(ok) - len(labelled), n_ok_with_warning=sum(1 for r in ok if r.warning))
    for metric in METRICS:
        values = np.array([r.scores[metric] for r in labelled if r.scores.get(metric) is not None], np.float64)
        stats.values[f"{metric}_mean"] = float(values.mean()) if values.size else None
        stats.values[f"{metric}_std"] = float(values.std()) if values.size else None
        stats.values[f"{metric}_median"] = float(np.median(values)) if values.size else None
        if metric in BOUNDARY_METRICS:
            stats.n_undefined[metric] = sum(1 for r in labelled if r.undefined(metric))
    return stats


def aggregate_records(records: Sequence[SampleRecord | dict]) -> Summary:
    """A :class:`Summary` holding only the aggregates of ``records``: :func:`sample_stats` over all of
    them and, with ``volume`` / ``domain`` metadata, per volume and per domain."""
    records = [as_record(r) for r in records]
    summary = Summary(stats=sample_stats(records))
    volumes = sorted({r.volume for r in records if r.volume is not None})
    if volumes:
        summary.per_volume = {}
        for volume in volumes:
            ok = [r for r in records if r.volume == volume and r.ok and "tp" in r.confusion]
            counts = {k: sum(r.confusion[k] for r in ok) for k in CONFUSION}
            dice, iou = dice_iou_from_counts(**counts) if ok else (None, None)
            domain = next((r.domain for r in records if r.volume == volume), None)
            work = {k: sum(r.counters.get(k, 0) for r in records if r.volume == volume) for k in SAMPLE_COUNTERS}
            summary.per_volume[volume] = VolumeScores(dice, iou, len(ok), domain, work=work)
        summary.stats.volumes = _volume_means(list(summary.per_volume.values()))
    domains = sorted({r.domain for r in records if r.domain is not None})
    if domains:
        summary.per_domain = {}
        for domain in domains:
            stats = sample_stats([r for r in records if r.domain == domain])
            if summary.per_volume is not None:
                members = [v for v in summary.per_volume.values() if v.domain == domain]
                stats.volumes = {**_volume_means(members), "n_volumes": len(members)}
            summary.per_domain[domain] = stats
    return summary


def _volume_means(volumes: list[VolumeScores]) -> dict[str, float | None]:
    return {f"{m}_mean": _mean([v.value(m) for v in volumes]) for m in ("dice_3d", "iou_3d")}


def add_volume_scores(summary: Summary, written: dict[str, dict[str, Any]]) -> None:
    """Merge the NIfTI writer's per-volume NSD / HD95 (mm) and output paths into ``summary``.

    Args:
        summary: from :func:`aggregate_records`; changed in place.
        written: :func:`salip_bench.evaluation.nifti_out.write_volumes`'s result.
    """
    per_volume = summary.per_volume if summary.per_volume is not None else {}
    summary.per_volume = per_volume
    for volume_id, entry in written.items():
        per_volume.setdefault(volume_id, VolumeScores()).written.update(entry)
    scored = [v for v in per_volume.values() if v.dice_3d is not None]
    top = summary.stats.volumes = dict(summary.stats.volumes or {})
    for metric in ("nsd_3d", "hd95_3d"):
        values = [v.value(metric) for v in scored if v.value(metric) is not None]
        top[f"{metric}_mean"] = sum(values) / len(values) if values else None
        top[f"{metric}_n_undefined"] = sum(1 for v in scored if v.undefined(metric))
    for domain, stats in (summary.per_domain or {}).items():
        stats.volumes = dict(stats.volumes or {})
        for metric in ("nsd_3d", "hd95_3d"):
            values = [v.value(metric) for v in scored if v.domain == domain and v.value(metric) is not None]
            stats.volumes[f"{metric}_mean"] = sum(values) / len(values) if values else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
