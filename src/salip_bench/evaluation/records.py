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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from salip_bench.evaluation.schema import (
    CONFUSION,
    INTEGER_COLUMNS,
    RECORD_ONLY,
    RESULT_COLUMNS,
    SampleRecord,
    as_record,
)
from salip_bench.storage.files import atomic_write_bytes, atomic_write_text, safe_name

# A sample in flight at two consecutive deaths of the process (resume records it so).
CRASH_FAILURE = "process died while evaluating this sample"
# How many deaths with a sample in flight make it a failure rather than a sample to run again.
DEATHS_TO_FAIL = 2


def marker_deaths(marker: dict) -> int:
    """Deaths of the process with this sample in flight that ``marker`` records: its earlier ``deaths``,
    plus one when it still names a process (``pid``) that was evaluating it, which is gone (only the
    lock holder reads markers, and a run that ends on its own clears the pid of its markers).

    Args:
        marker: a marker's JSON object.
    """
    return int(marker.get("deaths", 0)) + (1 if marker.get("pid") is not None else 0)


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

    def read_marker(self, sample_id: str) -> dict | None:
        """The sample's marker (None: none; ``{}``: unreadable, counted as one death in flight)."""
        try:
            return json.loads(self.marker_path(sample_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {"pid": -1}

    def mark_started(self, record: dict) -> None:
        """Note that ``record['id']`` is being evaluated by this process (``record``: what its failed
        record would hold), keeping the count of earlier deaths in it; :meth:`write` clears it.

        A marker found on resume that still names a process means that process died in the sample
        (:meth:`record_crashes`).
        """
        previous = self.read_marker(record["id"]) or {}
        mine = previous.get("pid") == os.getpid()
        deaths = int(previous.get("deaths", 0)) if mine else marker_deaths(previous)
        pids = previous.get("dead_pids", []) + (
            [previous["pid"]] if previous.get("pid") is not None and not mine else [])
        marker = {**record, "pid": os.getpid(), "started": time.time(), "deaths": deaths, "dead_pids": pids}
        atomic_write_text(self.marker_path(record["id"]), json.dumps(marker, sort_keys=True))

    def record_crashes(self, ids: list[str]) -> list[str]:
        """Settle the markers that name a dead process: a sample in flight at :data:`DEATHS_TO_FAIL`
        consecutive deaths becomes a failed record naming them (the ids so recorded are returned); one
        in flight at a single death keeps its marker, with the death counted, and runs again.
        Call only while holding the output_dir's lock."""
        crashed = []
        for sample_id in ids:
            marker = self.read_marker(sample_id)
            if marker is None or marker.get("pid") is None:
                continue
            if self.read(sample_id) is not None:  # finished, killed before its marker was removed
                self.marker_path(sample_id).unlink(missing_ok=True)
                continue
            deaths, pids = marker_deaths(marker), [*marker.get("dead_pids", []), marker.get("pid")]
            if deaths < DEATHS_TO_FAIL:
                kept = {**marker, "pid": None, "deaths": deaths, "dead_pids": pids}
                atomic_write_text(self.marker_path(sample_id), json.dumps(kept, sort_keys=True))
                continue
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.get("started", 0)))
            record = {k: v for k, v in marker.items() if k not in ("pid", "started", "deaths", "dead_pids")}
            record.update({"id": sample_id, "status": "failed",
                           "failure": f"{CRASH_FAILURE}, {deaths} times in a row (pids {pids}, last started "
                                      f"{started}); delete its record or set resume.retry_crashed=true to try "
                                      "it again"})
            atomic_write_text(self.record_path(sample_id), SampleRecord.from_dict(record).to_json())
            self.marker_path(sample_id).unlink(missing_ok=True)
            crashed.append(sample_id)
        return crashed

    def clear_own_markers(self, ids: list[str]) -> None:
        """Release this process's markers of samples it did not finish: the run is ending on its own
        (done, an error, a stop signal), not dying, so those samples are simply pending for the next
        run, with the deaths counted before (if any). Only a process that is killed leaves markers
        naming it for :meth:`record_crashes`."""
        for sample_id in ids:
            marker = self.read_marker(sample_id)
            if not marker or marker.get("pid") != os.getpid():
                continue
            if self.read(sample_id) is not None or not marker.get("deaths"):
                self.marker_path(sample_id).unlink(missing_ok=True)
            else:
                atomic_write_text(self.marker_path(sample_id), json.dumps({**marker, "pid": None}, sort_keys=True))

    def write(self, record: SampleRecord | dict, mask: np.ndarray | None) -> None:
        """Mask first, record last: a record on disk means the sample is complete.

        Args:
            record: the finished sample (a plain dict is read as its JSON would be).
            mask: the predicted mask to store as ``masks/<id>.png``, or None.
        """
        record = as_record(record)
        if mask is not None:
            png = io.BytesIO()
            Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
            atomic_write_bytes(self.masks_dir / f"{safe_name(record.id)}.png", png.getvalue())
        atomic_write_text(self.record_path(record.id), record.to_json())
        self.marker_path(record.id).unlink(missing_ok=True)

    def load(self, sample_id: str) -> SampleRecord | None:
        """The sample's record, or None if it has none (or an unreadable one: the sample is redone)."""
        data = self.read(sample_id)
        return SampleRecord.from_dict(data) if data is not None else None

    def load_all(self, ids: list[str]) -> list[SampleRecord]:
        """The records of those ``ids`` that have one, in ``ids`` order."""
        return [r for r in (self.load(i) for i in ids) if r is not None]

    def read(self, sample_id: str) -> dict | None:
        """The record's raw JSON object (resume compares its fingerprint and status)."""
        path = self.record_path(sample_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # unreadable record (should not happen with atomic writes): redo the sample

    def read_all(self, ids: list[str]) -> list[dict]:
        return [r for r in (self.read(i) for i in ids) if r is not None]


def method_columns() -> dict[str, str]:
    """Every registered method's ``info_columns`` ({column: ``int`` | ``float`` | ``bool`` | ``json``}) and ``qc_*``
    signals, and the quality gate's columns: each is a
    column of every run's results.csv, so that the runs of every method of a dataset share one column set."""
    from salip_bench.qc.base import ABSTAINED, DICE_WITHOUT_ABSTENTION, QUALITY
    from salip_bench.registry import METHODS

    # The quality gate's columns and every method's label-free signals (salip_bench.qc) belong to the set too.
    columns: dict[str, str] = {QUALITY: "float", ABSTAINED: "bool", DICE_WITHOUT_ABSTENTION: "float"}
    for name in METHODS.names():
        method = METHODS.get(name)
        columns.update(getattr(method, "info_columns", {}))
        columns.update({signal: "float" for signal in getattr(method, "qc_signals", ())})
    return columns


def integer_column_names() -> set[str]:
    """The columns that hold integers (empty where absent): read back as pandas' ``Int64``."""
    return {*INTEGER_COLUMNS, *(k for k, kind in method_columns().items() if kind == "int")}


def results_frame(records: list[SampleRecord | dict], columns: Sequence[str] = ()) -> pd.DataFrame:
    """One row per sample, JSON-encoding list-valued columns so the CSV stays one line per row.

    The columns are the same for every method of a dataset: :data:`RESULT_COLUMNS`, the confusion
    counts, the boxes, every method's info columns (:func:`method_columns`) and ``columns`` (the
    dataset's own), empty where a sample has no value; then any other key its records hold.

    Args:
        records: the run's records (:class:`SampleRecord` or their JSON objects).
        columns: further columns every run of this dataset has (its ``extra_metrics``' columns).
    """
    rows = []
    for record in records:
        data = as_record(record).to_dict()
        rows.append({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in data.items()
                     if k not in RECORD_ONLY})
    fixed = [*RESULT_COLUMNS, *CONFUSION, "boxes", *method_columns(), *columns]
    frame = pd.DataFrame(rows)
    for column in fixed:
        if column not in frame.columns:
            frame[column] = None
    integers = integer_column_names()
    for column in {*integer_columns(rows), *(c for c in frame.columns if c in integers)}:
        # failed samples leave gaps: keep counts integer (12, not 12.0)
        values = [row.get(column) for row in rows]
        if all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))) for v in values):
            frame[column] = pd.array(values, dtype="Int64")
    ordered = list(dict.fromkeys(c for c in RESULT_COLUMNS if c in frame.columns))
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

