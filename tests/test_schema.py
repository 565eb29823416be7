"""The record / summary schema: every shape the harness writes survives a round trip unchanged, the
absent-versus-null difference is kept, and finalize carries over only what exists nowhere else."""
from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest

from salip_bench.config_keys import changes_predictions, semantic_config
from salip_bench.evaluation.aggregate import aggregate_records
from salip_bench.evaluation.records import RecordStore, results_frame
from salip_bench.evaluation.schema import FROM_LAST_EVALUATING_RUN, SampleRecord, Summary
from salip_bench.evaluation.summary import Invocation, RunInfo, write_tables

LABELLED = {"id": "a", "status": "ok", "fingerprint": "f", "failure": "", "seconds": 0.5, "gt_area": 10,
            "pred_area": 12, "dice": 0.8, "iou": 0.67, "nsd": 0.0, "hd95": None, "tp": 9, "fp": 3, "fn": 1,
            "sam_encoder_passes": 1, "clip_images_encoded": 4, "n_kept": 4, "retrieved_boxes": [[1.0, 2.0, 3.0, 4.0]],
            "oracle_dice": 0.9, "hc_abs_err_mm": 1.5, "domain": "philips", "volume": "v1", "slice": 3,
            "spacing": [2.0, 2.0], "boxes": [[1.0, 2.0, 3.0, 4.0]]}
UNLABELLED = {"id": "b", "status": "ok", "fingerprint": "f", "failure": "", "seconds": 0.4, "gt_area": None,
              "pred_area": 7, "sam_encoder_passes": 1, "clip_images_encoded": 2, "warning": "NaN voxels set to 0"}
LOAD_FAILURE = {"id": "c", "status": "failed", "fingerprint": "f", "failure": "OSError: cannot read", "volume": "v1",
                "domain": "philips"}
OLD = {"id": "d", "status": "ok", "gt_area": 5, "pred_area": 5, "dice": 1.0, "iou": 1.0}  # before NSD / HD95


@pytest.mark.parametrize("data", [LABELLED, UNLABELLED, LOAD_FAILURE, OLD],
                         ids=["labelled", "unlabelled", "failed", "old"])
def test_record_round_trip_keeps_every_key_and_every_null(data):
    record = SampleRecord.from_json(json.dumps(data))
    assert record.to_dict() == data
    assert SampleRecord.from_json(record.to_json()) == record
    assert record.to_json() == json.dumps(data, sort_keys=True, indent=1)  # what RecordStore wrote before the schema


def test_record_fields_say_what_the_keys_meant():
    labelled, unlabelled, failed, old = (SampleRecord.from_dict(d) for d in (LABELLED, UNLABELLED, LOAD_FAILURE, OLD))
    assert labelled.labelled and labelled.undefined("hd95") and not labelled.undefined("nsd")
    assert labelled.extra == {"n_kept": 4, "retrieved_boxes": [[1.0, 2.0, 3.0, 4.0]], "oracle_dice": 0.9,
                              "hc_abs_err_mm": 1.5}
    assert not unlabelled.labelled and unlabelled.scores == {} and unlabelled.warning
    assert not failed.ok and "gt_area" not in failed.to_dict() and failed.volume == "v1"
    assert old.labelled and not old.undefined("hd95")  # a missing key is not an undefined score
    with pytest.raises(ValueError, match="without 'status'"):
        SampleRecord.from_dict({"id": "x"})


def test_nan_score_survives_json_and_is_averaged_as_the_numbers_say():
    data = {**LABELLED, "id": "n", "dice": float("nan")}
    record = SampleRecord.from_json(SampleRecord.from_dict(data).to_json())
    assert math.isnan(record.scores["dice"])
    stats = aggregate_records([record, SampleRecord.from_dict(LABELLED)]).stats
    assert math.isnan(stats.value("dice"))  # NaN is a value, not a gap: it is not silently dropped
    assert stats.n_undefined["hd95"] == 2


def test_results_frame_keeps_int64_counters_and_empty_scores_through_the_csv(tmp_path):
    records = [SampleRecord.from_dict(d) for d in (LABELLED, UNLABELLED, LOAD_FAILURE)]
    frame = results_frame(records)
    assert str(frame["sam_encoder_passes"].dtype) == "Int64"
    assert frame["sam_encoder_passes"].isna().tolist() == [False, False, True]
    assert "fingerprint" not in frame.columns and list(frame.columns[:3]) == ["id", "status", "dice"]
    path = tmp_path / "results.csv"
    frame.to_csv(path, index=False)
    back = pd.read_csv(path, dtype={"id": str, "domain": str, "volume": str})
    assert back["sam_encoder_passes"].tolist()[:2] == [1, 1] and pd.isna(back["sam_encoder_passes"][2])
    assert back["dice"].isna().tolist() == [False, True, True] and pd.isna(back["hd95"][0])
    assert json.loads(back["retrieved_boxes"][0]) == [[1.0, 2.0, 3.0, 4.0]]


def test_summary_round_trip_and_unknown_keys(tmp_path):
    records = [SampleRecord.from_dict(d) for d in (LABELLED, UNLABELLED, LOAD_FAILURE)]
    summary = aggregate_records(records)
    summary.method, summary.config, summary.work = "salip", {"dataset": {"name": "cc359"}}, {"sam_encoder_passes": 2}
    data = {**json.loads(summary.to_json()), "added_by_a_newer_version": {"x": 1}}
    back = Summary.from_json(json.dumps(data))
    assert back.to_dict() == data and back.extra == {"added_by_a_newer_version": {"x": 1}}
    assert back.per_volume["v1"].dice_3d == pytest.approx(2 * 9 / (2 * 9 + 3 + 1))
    assert back.per_volume["v1"].n_slices == 1
    assert back.per_domain["philips"].n_failed == 1 and back.per_domain["philips"].volumes["n_volumes"] == 1
    assert back.stats.n_unlabelled == 1 and back.stats.n_ok_with_warning == 1 and back.scored
    unlabelled = aggregate_records([SampleRecord.from_dict(UNLABELLED)])
    assert not unlabelled.scored and unlabelled.stats.value("dice") is None
    old = Summary.from_dict({"method": "salip", "dice_mean": 0.5, "n_ok": 3})  # a hand-made or old summary
    assert old.stats.value("dice") == 0.5 and old.stats.n_ok == 3 and old.per_volume is None and old.overrides == []
    with pytest.raises(ValueError, match="not a JSON object"):
        Summary.from_json("[1, 2]")


def test_finalize_derives_everything_but_the_last_evaluating_runs_engines(tmp_path):
    store = RecordStore(tmp_path)
    for data in (LABELLED, UNLABELLED):
        store.write(data, None)
    previous = {"dice_mean": 0.123, "n_ok": 99, "work": {"clip_texts_encoded": 6, "sam_encoder_passes": 50},
                "weights_identity": {"sam": {"model": "vit_b"}}, "engines": {"vit_b": {"engine": "sam"}},
                "stage_engines": {"generator": "vit_b"}, "method": "stale"}
    (tmp_path / "summary.json").write_text(json.dumps(previous))
    cfg = {"dataset": {"name": "folder"}, "method": {"name": "salip"}, "weights": "random", "save_masks": False}
    info = RunInfo(cfg, "f")
    summary = write_tables(info, tmp_path, store, ["a", "b"], Invocation())  # resumed: nothing ran, no engines
    assert summary.stats.n_ok == 2 and summary.stats.value("dice") == 0.8 and summary.method == "salip"
    assert summary.work == {"sam_encoder_passes": 2, "clip_images_encoded": 6, "clip_texts_encoded": 6,
                            "everything_passes": 0, "propagation_frames": 0}
    assert summary.weights_identity == previous["weights_identity"] and summary.engines == previous["engines"]
    assert summary.stage_engines == previous["stage_engines"]
    assert set(FROM_LAST_EVALUATING_RUN) == {"weights_identity", "engines", "stage_engines", "work.clip_texts_encoded"}
    fresh = write_tables(info, tmp_path, store, ["a", "b"], Invocation(3, {}, {}, {}))  # an invocation that ran
    assert fresh.work["clip_texts_encoded"] == 3 and fresh.engines == {} and fresh.weights_identity == {}
    assert json.loads((tmp_path / "summary.json").read_text()) == fresh.to_dict()


def test_one_rule_decides_which_keys_change_predictions():
    assert changes_predictions("retriever.name") and changes_predictions("trainer.precision")
    assert changes_predictions("dataset.prompts")
    for key in ("output_dir", "trainer.devices", "retriever.workers", "cache.enabled", "limit"):
        assert not changes_predictions(key), key


@pytest.mark.parametrize("extra", [[], ["trainer.precision=bf16-mixed", "retriever.workers=3", "limit=2"],
                                   ["dataset.max_side=512"]])
def test_fingerprint_hashes_the_semantic_config(extra):
    from conftest import SMOKE, compose_config
    from salip_bench.evaluation.harness import config_fingerprint

    cfg = compose_config(SMOKE + extra)
    digest = hashlib.sha256(json.dumps(semantic_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_fingerprint(cfg) == digest


def test_the_report_reads_runs_without_torch():
    import subprocess
    import sys

    code = "import sys, salip_bench.report, salip_bench.evaluation.schema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
