"""One results.csv column set for every method of a dataset, integer columns read back as integers,
strict JSON in W&B tables, and the report's footnote naming the bootstrap's seed and resamples."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import HC18, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.records import results_frame
from salip_bench.evaluation.wandb_log import typed_table
from salip_bench.reporting.runs import read_results
from salip_bench.reporting.stats import BOOTSTRAP_RESAMPLES
from salip_bench.reporting.tables import table_legend

EVAL = ["dataset=hc18", f"dataset.root={HC18}", "dataset.image_dir=images", "dataset.annotation_dir=annotations",
        "generator.points_per_side=2", "limit=2"]


def test_every_method_of_a_dataset_writes_one_column_set_read_back_with_integer_counts(tmp_path):
    headers, frames = {}, {}
    for method in ("salip", "gt_sam", "unprompted_sam"):
        out = tmp_path / method
        run(compose_config(SMOKE + EVAL + [f"method={method}", f"output_dir={out}"]), out)
        headers[method] = (out / "results.csv").read_text().splitlines()[0]
        frames[method] = read_results(out / "results.csv")
    assert len(set(headers.values())) == 1, headers
    columns = headers["salip"].split(",")
    for column in ("n_kept", "retrieved_boxes", "oracle_dice", "n_gt_boxes", "sam_predicted_iou", "tp",
                   "hc_pred_mm", "instance_boxes"):
        assert column in columns
    for frame in frames.values():
        for column in ("gt_area", "pred_area", "tp", "n_kept", "n_candidates", "sam_encoder_passes"):
            assert str(frame[column].dtype) == "Int64", (column, frame[column].dtype)
    assert frames["gt_sam"]["n_kept"].isna().all() and frames["salip"]["n_kept"].notna().all()
    assert str(frames["gt_sam"]["n_gt_boxes"].dtype) == "Int64"
    joined = pd.concat(frames.values())
    assert str(joined["n_kept"].dtype) == "Int64" and str(joined["gt_area"].dtype) == "Int64"


def test_a_failed_sample_leaves_integer_columns_integer():
    frame = results_frame([{"id": "a", "status": "failed", "failure": "x"},
                           {"id": "b", "status": "ok", "gt_area": 12, "pred_area": 10, "n_kept": 3, "dice": 0.5}])
    assert str(frame["gt_area"].dtype) == "Int64" and str(frame["n_kept"].dtype) == "Int64"
    assert frame.to_csv(index=False).splitlines()[1].count(".0,") == 0


def test_wandb_table_is_strict_json(tmp_path):
    import wandb

    frame = results_frame([{"id": "a", "status": "failed", "failure": "x"},
                           {"id": "b", "status": "ok", "dice": 0.5, "hd95": float("inf"), "gt_area": 3,
                            "pred_area": 2}])
    table = wandb.Table(dataframe=typed_table(frame))
    text = json.dumps(table.data, allow_nan=True)
    for bad in ("NaN", "Infinity"):
        assert bad not in text, text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    row = dict(zip(table.columns, table.data[1]))
    assert row["dice"] == 0.5 and row["hd95"] is None and row["gt_area"] == 3


def test_report_footnote_states_the_bootstrap_seed_and_resamples():
    assert f"seed 7, {BOOTSTRAP_RESAMPLES} resamples" in table_legend(7)
    assert np.isfinite(BOOTSTRAP_RESAMPLES)
