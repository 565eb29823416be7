"""The samples a logger shows as overlays: the first N of the whole run, read back from disk.

Under DDP each rank predicts a share of the samples, so what one rank kept in memory is not "the
first N"; the records and mask PNGs of every rank are on disk once all ranks have finished.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.schema import SampleRecord
from salip_bench.storage.files import safe_name
from salip_bench.types import Prediction, Sample


def first_overlays(dataset, ids: list[str], store: RecordStore,
                   count: int) -> list[tuple[Sample, Prediction, SampleRecord]]:
    """(sample, prediction, record) of the first ``count`` ok samples in dataset order.

    Args:
        dataset: the run's dataset (``ids`` index into it).
        ids: the run's sample ids, in dataset order.
        store: the run's records (with mask PNGs).
        count: how many to return.
    """
    kept: list[tuple[Sample, Prediction, SampleRecord]] = []
    for index, sample_id in enumerate(ids):
        if len(kept) >= count:
            break
        record = store.load(sample_id)
        mask_path = store.masks_dir / f"{safe_name(sample_id)}.png"
        if record is None or not record.ok or not mask_path.is_file():
            continue
        sample = dataset[index]
        if sample.error:
            continue
        with Image.open(mask_path) as png:
            mask = np.asarray(png) > 0
        boxes = np.asarray(record.boxes or np.zeros((0, 4)), np.float32).reshape(-1, 4)
        kept.append((sample, Prediction(mask=mask, boxes=boxes), record))
    return kept
