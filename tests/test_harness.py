"""Bad input, resume and failure handling of a run (in process, tiny random models)."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import HC18, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.stages.retrievers.guards import BACKGROUND_SENTENCES


def hc18_subset(root, ids):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(HC18 / "images" / f"{i}.png", root / "images")
        shutil.copy(HC18 / "masks" / f"{i}_mask.png", root / "masks")
    return root


def config(root, out, *extra):
    return compose_config(SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.prompts=fetal_head",
                                   f"output_dir={out}", *extra])


def test_candidates_flow_through_every_stage_and_reach_wandb(tmp_path):
    root = hc18_subset(tmp_path / "data", ["100_HC", "208_HC"])
    out = tmp_path / "out"
    summary = run(config(root, out, "logger=wandb", "logger.overlays=2"), out)
    frame = pd.read_csv(out / "results.csv")
    assert (frame["n_candidates"] >= frame["n_kept"]).all() and (frame["n_kept"] > 0).all()
    assert (frame["clip_images_encoded"] == frame["n_kept"]).all()  # one CLIP image per kept candidate
    assert frame["retrieved_boxes"].map(lambda s: len(json.loads(s))).eq(1).all()  # top-1
    # the fetal_head sentences and the background prototype's (qc margin), once per run
    assert summary["work"]["clip_texts_encoded"] == 6 + len(BACKGROUND_SENTENCES)
    assert summary["work"]["sam_encoder_passes"] == 2  # generator + refiner share one pass per image
    assert len(list((out / "wandb").glob("offline-run-*/files/media/images/*.png"))) == 2


def test_corrupt_and_unpaired_samples_are_recorded_and_the_run_completes(tmp_path):
    root = hc18_subset(tmp_path / "data", ["100_HC", "208_HC"])
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not really an image")
    shutil.copy(HC18 / "masks" / "100_HC_mask.png", root / "masks" / "broken_mask.png")
    shutil.copy(HC18 / "images" / "249_HC.png", root / "images" / "nomask.png")
    shutil.copy(HC18 / "masks" / "208_HC_mask.png", root / "masks" / "wrongsize_mask.png")
    shutil.copy(HC18 / "images" / "249_HC.png", root / "images" / "wrongsize.png")
    out = tmp_path / "out"
    summary = run(config(root, out), out)
    frame = pd.read_csv(out / "results.csv").set_index("id")
    assert summary["n_ok"] == 2 and summary["n_failed"] == 3
    assert frame.loc["broken", "status"] == "failed" and "UnidentifiedImageError" in frame.loc["broken", "failure"]
    assert "no mask" in frame.loc["nomask", "failure"]
    assert "mask shape" in frame.loc["wrongsize", "failure"]
    assert frame.loc[["100_HC", "208_HC"], "status"].eq("ok").all()
    assert summary["dice_mean"] == pytest.approx(frame.loc[["100_HC", "208_HC"], "dice"].mean())


def test_fail_fast_stops_at_the_first_bad_sample_keeping_finished_ones(tmp_path):
    root = hc18_subset(tmp_path / "data", ["100_HC"])
    (root / "images" / "zz_broken.png").write_bytes(b"junk")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="zz_broken"):
        run(config(root, out, "fail_fast=true"), out)
    assert json.loads((out / "samples" / "100_HC.json").read_text())["status"] == "ok"
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_resume_computes_only_missing_samples_and_rejects_another_config(tmp_path):
    root = hc18_subset(tmp_path / "data", ["100_HC", "208_HC", "249_HC"])
    out = tmp_path / "out"
    first = run(config(root, out, "limit=1"), out)
    assert first["n_total"] == 1
    record = (out / "samples" / "100_HC.json").read_text()
    second = run(config(root, out), out)
    assert second["n_total"] == 3 and second["work"]["sam_encoder_passes"] == 3
    assert (out / "samples" / "100_HC.json").read_text() == record  # not recomputed
    with pytest.raises(RuntimeError, match="another configuration"):
        run(config(root, out, "filter.max_area=0.3"), out)
    third = run(config(root, out, "filter.max_area=0.3", "resume=false"), out)
    assert third["n_total"] == 3 and third["config"]["filter"]["max_area"] == 0.3


def test_empty_ground_truth_convention(tmp_path):
    import numpy as np

    from salip_bench.metrics import dice_iou

    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice_iou(full, empty) == (0.0, 0.0) and dice_iou(empty, full) == (0.0, 0.0)
    half = full.copy()
    half[:2] = False
    assert dice_iou(half, full) == pytest.approx((2 * 8 / 24, 0.5))


def test_bf16_autocast_runs_end_to_end_and_is_another_configuration(tmp_path):
    """trainer.precision=bf16-mixed (CPU autocast here): SAM and CLIP in bf16, float32 results; it
    changes predictions, so it is not resumed into a float32 run; retriever.workers changes none."""
    from salip_bench.evaluation.harness import config_fingerprint

    root = hc18_subset(tmp_path / "data", ["100_HC"])
    out = tmp_path / "bf16"
    summary = run(config(root, out, "trainer.precision=bf16-mixed"), out)
    assert summary["n_ok"] == 1 and 0.0 <= summary["dice_mean"] <= 1.0
    assert config_fingerprint(config(root, out)) != summary["fingerprint"]
    with pytest.raises(RuntimeError, match="another configuration"):
        run(config(root, out), out)
    assert config_fingerprint(config(root, out, "retriever.workers=1")) == config_fingerprint(config(root, out))
