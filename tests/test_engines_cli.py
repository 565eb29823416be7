"""Per-stage engines from the command line: SAM 2.1 everywhere, a MedSAM refiner behind SAM v1,
a multirun across engine families, and offline failures that name what is missing."""
from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from conftest import CXR, HC18, SMOKE, compose_config
from salip_bench.engines.weights import WeightsNotFoundError
from salip_bench.evaluation.harness import build_context, build_engine
from test_cli import run_cli

FAST = ["experiment=smoke", "logger=none", "cache.enabled=false"]  # smoke thresholds, every pass counted
O1 = ["model=sam2_tiny", "clip=tiny", "weights=random", "dataset=folder", f"dataset.root={CXR}",
      "dataset.prompts=lungs", "dataset.top_k=2"]
O2 = ["model=sam_tiny", "model@refiner_model=medsam_tiny", "clip=tiny", "weights=random", "dataset=folder",
      f"dataset.root={HC18}", "dataset.prompts=fetal_head"]


def run_ok(overrides, tmp_path, out, n):
    """Run the CLI into ``out``; its results (``n`` ok rows), its summary and the CLI result."""
    result = run_cli(overrides + [f"output_dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return (*ok_rows_and_summary(out, n), result)


def ok_rows_and_summary(out, n):
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == n and (frame["status"] == "ok").all(), frame.get("failure")
    return frame, json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # the recipe test below covers both engine layouts in the default suite
def test_sam2_in_every_sam_stage_shares_one_embedding_per_image(tmp_path):
    frame, summary, result = run_ok(O1 + FAST + ["limit=2"], tmp_path, tmp_path / "O1", 2)
    assert summary["stage_engines"] == {"generator": "sam2_tiny", "refiner": "sam2_tiny", "retriever": "tiny"}
    sam2 = summary["engines"]["sam2_tiny"]
    assert sam2["engine"] == "sam2" and sam2["identity"] == {"model": "sam2_tiny", "engine": "sam2",
                                                             "weights": "random", "seed": 0}
    assert sam2["counters"] == {"encoder_passes": 2} and frame["sam_encoder_passes"].eq(1).all()
    assert "For numpy array image" not in result.stdout + result.stderr  # sam2's per-image INFO lines muted


@pytest.mark.slow
def test_medsam_refiner_behind_sam_v1_is_its_own_engine(tmp_path):
    frame, summary, result = run_ok(O2 + FAST + ["limit=2"], tmp_path, tmp_path / "O2", 2)
    assert summary["stage_engines"] == {"generator": "sam_tiny", "refiner": "medsam_tiny", "retriever": "tiny"}
    engines = summary["engines"]
    assert engines["medsam_tiny"]["engine"] == "medsam" and engines["sam_tiny"]["engine"] == "sam"
    assert engines["medsam_tiny"]["counters"] == engines["sam_tiny"]["counters"] == {"encoder_passes": 2}
    assert frame["sam_encoder_passes"].eq(2).all()  # no embedding reuse across two engines
    assert summary["config"]["refiner_model"]["name"] == "medsam_tiny"


def test_models_recipe_multirun_across_engine_families_renders_a_table_naming_the_engines(tmp_path):
    """experiment=models with its tiny zoo entries: sam2 touches Hydra's global state on import, yet
    every job of the multirun runs, and the report's columns say which engines each used.
    (The BiomedCLIP and SAM 3 entries need the CLIP-family/SAM 3 engines: their own tests.)"""
    from salip_bench.report import main as report_main

    out = tmp_path / "multi"
    zoo = "tiny_sam2,tiny_paper,tiny_medsam_refiner"
    result = run_cli(["-m", "experiment=models", f"+zoo={zoo}", *O1[2:], "logger=none",
                      "cache.enabled=false", "generator.points_per_side=4", "generator.pred_iou_thresh=0",
                      "generator.stability_score_thresh=0", "limit=1", f"output_dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((out / str(job) / "summary.json").read_text()) for job in range(3)]
    stages = [summary["stage_engines"] for summary in summaries]
    assert [(s["generator"], s["refiner"]) for s in stages] == [("sam2_tiny", "sam2_tiny"), ("sam_tiny", "sam_tiny"),
                                                                ("sam_tiny", "medsam_tiny")]
    sam2, medsam = summaries[0]["engines"], summaries[2]["engines"]
    assert sam2["sam2_tiny"]["engine"] == "sam2" and sam2["sam2_tiny"]["identity"] == {
        "model": "sam2_tiny", "engine": "sam2", "weights": "random", "seed": 0}
    # generator and refiner: one encoder pass; one "everything" pass, nothing propagated
    assert sam2["sam2_tiny"]["counters"] == {"encoder_passes": 1, "everything_passes": 1, "propagation_frames": 0}
    assert medsam["medsam_tiny"]["counters"] == {"encoder_passes": 1}  # box prompts only
    assert medsam["sam_tiny"]["counters"] == {"encoder_passes": 1, "everything_passes": 1}
    assert summaries[2]["work"]["sam_encoder_passes"] == 2 and medsam["medsam_tiny"]["engine"] == "medsam"
    assert all(summary["n_ok"] == 1 and summary["n_failed"] == 0 for summary in summaries)
    report_main([str(out), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "table.md").read_text()
    for label in ("salip (model=sam2_tiny, refiner_model=sam2_tiny)", "salip (model=sam_tiny, refiner_model=sam_tiny)",
                  "salip (model=sam_tiny, refiner_model=medsam_tiny)"):
        assert label in table, table


@pytest.mark.slow
@pytest.mark.parametrize("line,n", [(O1, 8), (O2, 12)], ids=["O1", "O2"])
def test_contract_lines_as_written(tmp_path, line, n):
    """The issue's command lines with the default generator settings: one ok row per image."""
    _, summary, _ = run_ok(line, tmp_path, tmp_path / "OUT", n)
    assert all(e["identity"]["weights"] == "random" for e in summary["engines"].values())


def test_missing_sam2_checkpoint_offline_fails_fast_naming_it(tmp_path):
    start = time.monotonic()
    result = run_cli(["model=sam2_hiera_l", "clip=tiny", f"output_dir={tmp_path / 'out'}"], tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 2 and time.monotonic() - start < 60
    assert "sam2.1_hiera_large.pt" in said and "model.checkpoint" in said and "Traceback" not in said


def test_medsam_as_generator_is_a_one_line_error(tmp_path):
    result = run_cli(["model=medsam_tiny", "clip=tiny", "weights=random", *FAST, f"output_dir={tmp_path / 'o'}"],
                     tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 2 and "(chosen by model=)" in said and "Traceback" not in said


def test_missing_refiner_checkpoint_names_the_refiner_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path))
    cfg = compose_config(SMOKE + ["weights=pretrained", "model@refiner_model=medsam_vit_b"])
    with pytest.raises(WeightsNotFoundError) as err:
        build_engine(cfg, "refiner_model")
    message = str(err.value)
    assert message.startswith("model@refiner_model=medsam_vit_b: ")
    assert "medsam_vit_b.pth" in message and "refiner_model.checkpoint" in message and "bowang-lab/MedSAM" in message


def test_refiner_shares_the_generators_engine_exactly_when_it_is_the_same_entry(tmp_path):
    from salip_bench.datasets.folder import FolderDataset

    dataset = FolderDataset(str(CXR))
    same = build_context(compose_config(SMOKE + ["model@refiner_model=sam_tiny"]), dataset)
    assert same["refiner_sam"]() is same["sam"]()
    default = build_context(compose_config(SMOKE), dataset)
    assert default["refiner_sam"]() is default["sam"]()
    other = build_context(compose_config(SMOKE + ["model@refiner_model=medsam_tiny"]), dataset)
    assert other["refiner_sam"]() is not other["sam"]() and other["refiner"]().sam is other["refiner_sam"]()
