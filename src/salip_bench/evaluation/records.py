"""Per-sample records on disk, and the run tables built from them.

Each finished sample is one JSON file under ``samples/`` (plus its mask PNG), written to a
temporary file and renamed, so a killed run never leaves a half-written result and a resumed run
knows exactly what is done. ``results.csv`` and ``summary.json`` are derived from those records.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from salip_bench.metrics import dice_iou_from_counts
from salip_bench.storage.files import atomic_write_bytes, atomic_write_text, safe_name

RESULT_COLUMNS = ["id", "status", "dice", "iou", "nsd", "hd95", "failure", "warning", "domain", "volume", "slice", "n_candidates", "n_kept", "retrieved_classes",
                  "retrieved_scores", "retrieved_boxes", "gt_area", "pred_area", "seconds",
                  "sam_encoder_passes", "clip_images_encoded"]
# Scores against the ground truth: always columns of results.csv, empty for unlabelled images.
SCORE_COLUMNS = ("dice", "iou", "nsd", "hd95")


# A sample found marked as started but never finished: the process died in it (resume records it so).
CRASH_FAILURE = "process died while evaluating this sample"


class RecordStore:
    """The ``samples/`` and ``masks/`` folders of one output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.samples_dir = self.out_dir / "samples"
        self.masks_dir = self.out_dir / "masks"

    def record_path(self, sample_id: str) -> Path:
        return self.samples_dir / f"{safe_name(sample_id)}.json"

    def marker_path(self, sample_id: str) -> Path:
        return self.samples_dir / f"{safe_name(sample_id)}.started"

    def mark_started(self, record: dict) -> None:
        """Note that ``record['id']`` is being evaluated (``record``: what its failed record would
        hold); :meth:`write` clears it. One found on resume means the process died in that sample."""
        marker = {**record, "pid": os.getpid(), "started": time.time()}
        atomic_write_text(self.marker_path(record["id"]), json.dumps(marker, sort_keys=True))

    def record_crashes(self, ids: list[str]) -> list[str]:
        """Turn every started-but-unfinished marker of ``ids`` into a failed record naming the crash;
        returns the ids so recorded. Call only while holding the output_dir's lock."""
        crashed = []
        for sample_id in ids:
            marker_path = self.marker_path(sample_id)
            if not marker_path.is_file():
                continue
            try:
                marker = json.loads(marker_path.read_text())
            except (OSError, json.JSONDecodeError):
                marker = {}
            if self.read(sample_id) is None:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.get("started", 0)))
                record = {k: v for k, v in marker.items() if k not in ("pid", "started")}
                record.update({"id": sample_id, "status": "failed",
                               "failure": f"{CRASH_FAILURE} (pid {marker.get('pid')}, started {started}); "
                                          "delete its record or set resume.retry_crashed=true to try it again"})
                atomic_write_text(self.record_path(sample_id), json.dumps(record, sort_keys=True, indent=1))
                crashed.append(sample_id)
            marker_path.unlink(missing_ok=True)
        return crashed

    def clear_own_markers(self, ids: list[str]) -> None:
        """Drop this process's markers of samples it did not finish: the run is ending on its own
        (done, an error, Ctrl-C), not dying, so those samples are simply pending for the next run.
        Only a process that is killed leaves its markers for :meth:`record_crashes`."""
        for sample_id in ids:
            marker_path = self.marker_path(sample_id)
            try:
                owner = json.loads(marker_path.read_text()).get("pid")
            except (OSError, json.JSONDecodeError):
                continue
            if owner == os.getpid():
                marker_path.unlink(missing_ok=True)

    def write(self, record: dict, mask: np.ndarray | None) -> None:
        """Mask first, record last: a record on disk means the sample is complete."""
        if mask is not None:
            png = io.BytesIO()
            Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
            atomic_write_bytes(self.masks_dir / f"{safe_name(record['id'])}.png", png.getvalue())
        atomic_write_text(self.record_path(record["id"]), json.dumps(record, sort_keys=True, indent=1))
        self.marker_path(record["id"]).unlink(missing_ok=True)

    def read(self, sample_id: str) -> dict | None:
        path = self.record_path(sample_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # unreadable record (should not happen with atomic writes): redo the sample

    def read_all(self, ids: list[str]) -> list[dict]:
        return [r for r in (self.read(i) for i in ids) if r is not None]


def results_frame(records: list[dict]) -> pd.DataFrame:
    """One row per sample, JSON-encoding list-valued columns so the CSV stays one line per row."""
    rows = []
    for record in records:
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in record.items()
               if k not in ("fingerprint",)}
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in SCORE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in integer_columns(rows):  # failed samples leave gaps: keep counts integer (12, not 12.0)
        frame[column] = pd.array([row.get(column) for row in rows], dtype="Int64")
    ordered = [c for c in RESULT_COLUMNS if c in frame.columns]
    return frame[ordered + sorted(c for c in frame.columns if c not in ordered)]


def integer_columns(rows: list[dict]) -> list[str]:
    """Columns whose every present value is an int (bools excluded)."""
    columns: dict[str, bool] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                columns[key] = columns.get(key, True) and is_int
    return [c for c, is_int in columns.items() if is_int]


def aggregate(records: list[dict]) -> dict:
    """Mean/std/median of per-sample Dice and IoU over the samples that did not fail; with
    ``volume`` / ``domain`` keys in the records also per volume (3D Dice of the stacked slices) and
    per domain (mean over its volumes, as the paper's Table 1)."""
    summary = per_sample_stats(records)
    volumes = sorted({r["volume"] for r in records if r.get("volume") is not None})
    if volumes:
        per_volume = {}
        for volume in volumes:
            ok = [r for r in records if r.get("volume") == volume and r["status"] == "ok" and "tp" in r]
            counts = {k: sum(r[k] for r in ok) for k in ("tp", "fp", "fn")}
            dice, iou = dice_iou_from_counts(**counts) if ok else (None, None)
            domain = next((r.get("domain") for r in records if r.get("volume") == volume), None)
            per_volume[volume] = {"dice_3d": dice, "iou_3d": iou, "n_slices": len(ok), "domain": domain}
        summary["per_volume"] = per_volume
        summary["dice_3d_mean"] = _mean([v["dice_3d"] for v in per_volume.values()])
        summary["iou_3d_mean"] = _mean([v["iou_3d"] for v in per_volume.values()])
    domains = sorted({r["domain"] for r in records if r.get("domain") is not None})
    if domains:
        summary["per_domain"] = {}
        for domain in domains:
            stats = per_sample_stats([r for r in records if r.get("domain") == domain])
            if volumes:
                vols = [v for v in summary["per_volume"].values() if v["domain"] == domain]
                stats["dice_3d_mean"] = _mean([v["dice_3d"] for v in vols])
                stats["iou_3d_mean"] = _mean([v["iou_3d"] for v in vols])
                stats["n_volumes"] = len(vols)
            summary["per_domain"][domain] = stats
    return summary


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def is_labelled(record: dict) -> bool:
    """Whether the sample had a ground truth (``gt_area`` is recorded for every ok sample that had one)."""
    return record.get("gt_area") is not None or record.get("dice") is not None


def per_sample_stats(records: list[dict]) -> dict:
    """Counts and mean/std/median of each score over the ok samples where it is defined;
    ``n_unlabelled`` ok samples had no ground truth, ``<metric>_n_undefined`` labelled ones no value
    (HD95 with exactly one empty mask): both are counted, not dropped silently."""
    ok = [r for r in records if r["status"] == "ok"]
    labelled = [r for r in ok if is_labelled(r)]
    summary: dict = {"n_total": len(records), "n_ok": len(ok), "n_failed": len(records) - len(ok),
                     "n_unlabelled": len(ok) - len(labelled), "n_ok_with_warning": sum(1 for r in ok if r.get("warning"))}
    for metric in SCORE_COLUMNS:
        values = np.array([r[metric] for r in labelled if r.get(metric) is not None], dtype=np.float64)
        summary[f"{metric}_mean"] = float(values.mean()) if values.size else None
        summary[f"{metric}_std"] = float(values.std()) if values.size else None
        summary[f"{metric}_median"] = float(np.median(values)) if values.size else None
        if metric in ("nsd", "hd95"):
            # Recorded as None (HD95 with one empty mask); records from before NSD/HD95 lack the key.
            summary[f"{metric}_n_undefined"] = sum(1 for r in labelled if metric in r and r[metric] is None)
    return summary
