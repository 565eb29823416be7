"""Baselines run through the same harness as SaLIP, and the report builds from those real runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import HC18, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.report import CATEGORIES
from salip_bench.report import main as report_main

HC18_DEV = ["dataset=hc18", f"dataset.root={HC18}", "dataset.image_dir=images", "dataset.annotation_dir=annotations",
            "limit=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    summaries = {}
    for method in ("salip", "gt_sam", "oracle"):
        out = root / method
        summaries[method] = run(compose_config(SMOKE + HC18_DEV + [f"method={method}", f"output_dir={out}"]), out)
    return root, summaries


def test_every_method_writes_the_same_outputs(runs):
    root, summaries = runs
    for method, summary in summaries.items():
        frame = pd.read_csv(root / method / "results.csv")
        assert summary["method"] == method and summary["n_ok"] == 2 and len(frame) == 2
        assert {"id", "status", "dice", "iou", "hc_pred_mm", "hc_ref_mm"} <= set(frame.columns)
        assert frame["dice"].between(0, 1).all()
    gt_sam = pd.read_csv(root / "gt_sam" / "results.csv")
    assert (gt_sam["n_gt_boxes"] == 1).all()  # one fetal head: one GT component, one box
    salip = pd.read_csv(root / "salip" / "results.csv")
    oracle = pd.read_csv(root / "oracle" / "results.csv")
    # The oracle retriever picks, from the same kept candidates, the best-overlapping one.
    assert np.allclose(salip["oracle_dice"], oracle["oracle_dice"])
    assert (oracle["retrieved_dice"] >= salip["retrieved_dice"] - 1e-9).all()


def test_report_from_real_runs(runs, tmp_path, capsys):
    root, _ = runs
    report_main([str(root / "salip"), str(root / "gt_sam"), str(root / "oracle"), "--out", str(tmp_path / "rep")])
    table = (tmp_path / "rep" / "table.md").read_text()
    for method in ("salip", "gt_sam", "oracle"):
        assert f"{method} DSC" in table
    assert "fetal_head" in table
    assert (tmp_path / "rep" / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failures = pd.read_csv(tmp_path / "rep" / "failures.csv").set_index("method")
    # salip and oracle record stage scores; gt_sam has none, so it is not attributable.
    assert sorted(failures.index) == ["oracle", "salip"] and (failures["n"] == 2).all()
    assert (failures[CATEGORIES].sum(axis=1) == 2).all()
    assert "salip" in capsys.readouterr().out
