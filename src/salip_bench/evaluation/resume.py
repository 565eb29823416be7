"""Resuming a run: which samples are still to run, and recording the ones a dead process left behind."""
from __future__ import annotations

import logging
from collections.abc import Mapping

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from salip_bench.evaluation.records import CRASH_FAILURE, DEATHS_TO_FAIL, RecordStore, marker_deaths
from salip_bench.evaluation.schema import FAILED
from salip_bench.evaluation.validation import resume_settings

log = logging.getLogger(__name__)


def record_crashes(store: RecordStore, ids: list[str], resume: bool | Mapping) -> None:
    """On global rank 0 with resume enabled: settle the markers of samples a process died in
    (:meth:`~salip_bench.evaluation.records.RecordStore.record_crashes`): one death, the sample runs
    again; two in a row, it is recorded as failed, logged.

    Args:
        store: the run's records.
        ids: the run's sample ids.
        resume: the ``resume`` setting (see :func:`salip_bench.evaluation.validation.resume_settings`).
    """
    if resume_settings(resume)["enabled"] and rank_zero_only.rank == 0:
        for sample_id in store.record_crashes(ids):
            log.warning("sample %s: the process died while evaluating it %d times in a row; recorded as failed",
                        sample_id, DEATHS_TO_FAIL)


def pending_indices(store: RecordStore, ids: list[str], fingerprint: str, resume: bool | Mapping) -> list[int]:
    """Indices of the samples still to run.

    A failed sample is run again with ``retry_failed``; one the process died in once (its marker
    says so) runs again; one it died in twice in a row (its record says so, or rank 0 is recording
    it from its marker right now) only with ``retry_crashed``.

    Args:
        store: the run's records.
        ids: the run's sample ids, in order.
        fingerprint: this configuration's :func:`~salip_bench.evaluation.fingerprint.config_fingerprint`.
        resume: the ``resume`` setting (see :func:`salip_bench.evaluation.validation.resume_settings`).

    Raises:
        RuntimeError: a record of another configuration is in the output directory.
    """
    resume = resume_settings(resume)
    if not resume["enabled"]:
        return list(range(len(ids)))
    pending = []
    for index, sample_id in enumerate(ids):
        record = store.load(sample_id)
        if record is None:
            marker = store.read_marker(sample_id)
            if resume["retry_crashed"] or marker is None or marker_deaths(marker) < DEATHS_TO_FAIL:
                pending.append(index)
        elif record.fingerprint != fingerprint:
            raise RuntimeError(f"{store.out_dir} holds results of another configuration (sample {sample_id}: "
                               f"fingerprint {record.fingerprint} != {fingerprint}); choose a new "
                               "output_dir, or resume=false to overwrite them")
        elif record.status == FAILED:
            crashed = str(record.failure or "").startswith(CRASH_FAILURE)
            if resume["retry_crashed"] if crashed else resume["retry_failed"]:
                pending.append(index)
    return pending
