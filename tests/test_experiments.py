"""The paper-table recipes (``conf/experiment/tab*.yaml``): each sweeps what its table compares, every
job of the sweep composes, and ``salip-bench-report`` turns the multirun into that table with one
column pair per swept value. tab3, tab5 and tab6 run for real through the CLI (tiny random models,
one image per job), tab1 and tab2 too, and tab4 with the released ViT-B/L/H architectures and random
weights (about 3.5 min on 2 cores); those three are marked slow (``-m slow`` runs them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, CXR, REPO, compose_config
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.report import main as report_main

# recipe → (swept key, values, the report's column label of each value)
TABLES = {
    "tab1": ("method", ["salip", "sam_clip", "gt_sam", "unprompted_sam", "oracle"],
             ["salip", "sam_clip", "gt_sam", "unprompted_sam", "oracle"]),
    "tab2": ("dataset.prompts", ["lungs", "lungs_left_right"],
             ["salip (prompts=lungs)", "salip (prompts=lungs_left_right)"]),
    "tab3": ("retriever", ["crop", "crop_expand", "box", "reverse_blur", "contour"],
             [f"salip (retriever={r})" for r in ("crop", "crop_expand", "box", "reverse_blur", "contour")]),
    "tab4": ("model", ["sam_vit_b", "sam_vit_l", "sam_vit_h"],
             [f"salip (model={m})" for m in ("sam_vit_b", "sam_vit_l", "sam_vit_h")]),
    "tab5": ("method", ["salip", "sam_clip"], ["salip", "sam_clip"]),
    "tab6": ("filter", ["none", "area"], ["salip (filter=none)", "salip (filter=area)"]),
}
# The chest X-ray dev set, with the prompt set and top-k the recipe does not set itself.
DATA = ["dataset=folder", f"dataset.root={CXR}"]
LUNGS = ["dataset.prompts=lungs", "dataset.top_k=2"]
# The smoke settings as plain overrides (experiment=smoke is a recipe too: one experiment= per run).
# filter.max_area is left out where the filter is swept: filter=none has no such key.
SMOKE = ["model=sam_tiny", "clip=tiny", "weights=random", "generator.pred_iou_thresh=0",
         "generator.stability_score_thresh=0", "generator.box_nms_thresh=1.0", "generator.points_per_side=4"]
CLI = str(Path(sys.executable).with_name("salip-bench"))


def data_overrides(table: str) -> list[str]:
    return DATA + ([] if table == "tab2" else LUNGS)


def test_recipe_sweeps_what_its_table_compares():
    for table, (key, values, _) in TABLES.items():
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={table}"], return_hydra_config=True)
        assert dict(cfg.hydra.sweeper.params) == {key: ",".join(values)}, table
        text = (CONF / "experiment" / f"{table}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), table
        assert f"Table {table[-1]}" in text and f"salip-bench -m experiment={table}" in text, table
        assert "salip-bench-report" in text and "dataset" in text, table


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_job_of_the_sweep_composes(table):
    key, values, _ = TABLES[table]
    for value in values:
        cfg = compose_config([f"experiment={table}", *data_overrides(table), f"{key}={value}"])
        if "." in key:
            assert cfg["dataset"]["prompts"] == value
        else:
            assert cfg[key]["name"] == value


def test_tab2_top_k_mapping_serves_both_prompt_sets():
    expected = {"lungs": {"lung": 2}, "lungs_left_right": {"left lung": 1, "right lung": 1}}
    # The recipe's default dataset (cxr, pointed at the dev set's folders), and the folder layout.
    for dataset in (["dataset.image_dir=images"], ["dataset=folder"]):
        for prompts, top_k in expected.items():
            cfg = compose_config(["experiment=tab2", *dataset, f"dataset.root={CXR}", f"dataset.prompts={prompts}"])
            assert DatasetSettings.from_config(cfg["dataset"]).top_k_per_class() == top_k


def fake_run(out: Path, cfg: dict, dice: float) -> None:
    """summary.json as the harness writes it, for the report's labels (no models run)."""
    out.mkdir(parents=True)
    summary = {"method": cfg["method"]["name"], "dataset": cfg["dataset"]["name"],
               "dataset_root": cfg["dataset"]["root"],
               "roi": cfg["dataset"]["prompts"], "config": cfg, "n_ok": 1, "n_failed": 0, "n_total": 1,
               "dice_mean": dice, "dice_std": 0.0, "iou_mean": dice / (2 - dice), "iou_std": 0.0}
    (out / "summary.json").write_text(json.dumps(summary))


def report_columns(sweep: Path, out: Path, labels: list[str]) -> pd.DataFrame:
    """Report the sweep; check its table is one row with a DSC/mIoU column pair per label, in order."""
    report_main([str(sweep), "--out", str(out)])
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 1 and table.loc[0, "dataset"] == "cxr_lung"
    assert [c[: -len(" DSC mean")] for c in table.columns if c.endswith(" DSC mean")] == labels
    header = (out / "table.md").read_text().splitlines()[0]
    assert header == "| ROI | Dataset | Domain | " + " | ".join(f"{lab} DSC | {lab} mIoU" for lab in labels) + " |"
    return table


@pytest.mark.parametrize("table", sorted(TABLES))
def test_report_labels_each_swept_value(tmp_path, table):
    key, values, labels = TABLES[table]
    for job, value in enumerate(values):
        cfg = compose_config([f"experiment={table}", *data_overrides(table), f"{key}={value}",
                              f"output_dir={tmp_path / 'sweep'}"])
        fake_run(tmp_path / "sweep" / str(job), cfg, 0.1 * (job + 1))
    frame = report_columns(tmp_path / "sweep", tmp_path / "report", labels)
    for job, label in enumerate(labels):
        assert frame.loc[0, f"{label} DSC mean"] == pytest.approx(0.1 * (job + 1))
    if table == "tab2":  # one ground truth, two prompt sets: a single row naming both
        assert frame.loc[0, "roi"] == "lungs / lungs_left_right"


def multirun(table: str, tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    swept = TABLES[table][0]  # never pinned by a smoke override (tab4 sweeps the model)
    smoke = [o for o in SMOKE if not o.startswith(f"{swept}=")] + ([] if table == "tab6" else ["filter.max_area=0.9"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SALIP_BENCH_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([CLI, "-m", f"experiment={table}", *smoke, *data_overrides(table), "limit=1",
                             "logger=none", "trainer.enable_progress_bar=false", f"output_dir={sweep}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return sweep


def check_real_table(table: str, tmp_path: Path) -> None:
    key, values, labels = TABLES[table]
    sweep = multirun(table, tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [str(i) for i in range(len(values))]
    for job, value in enumerate(values):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["n_ok"] == 1 and f"{key}={value}" in summary["overrides"]
    frame = report_columns(sweep, tmp_path / "report", labels)
    assert frame[[f"{label} DSC mean" for label in labels]].notna().all(axis=None)


@pytest.mark.parametrize("table", ["tab3", "tab5", "tab6"])
def test_real_multirun_becomes_its_table(tmp_path, table):
    check_real_table(table, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("table", ["tab1", "tab2", "tab4"])
def test_real_multirun_becomes_its_table_slow(tmp_path, table):
    check_real_table(table, tmp_path)
