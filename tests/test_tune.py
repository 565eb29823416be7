"""Test-time tuning (``salip-bench-tune``) and applying its result (``salip-bench tuned=...``), in process
with tiny random models on one image: the numbers are meaningless, the mechanics are not."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from conftest import HC18, HC18_TRAIN, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.tuned import TuningError
from salip_bench.tune import sample_trials, tune

EVAL = ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head"]
# Two random trials (no baseline), so that the choice rests on the seeded draws alone; cheap settings.
SPACE = ["tune.baseline=false", "tune.n_trials=2", "tune.n_images=1", "~tune.space",
         "+tune.space.generator.pred_iou_thresh=[0.0,0.5]", "+tune.space.generator.points_per_side=[2,4]",
         "+tune.space.filter.max_area=[0.5,0.95]"]


def tune_config(out, *extra: str) -> dict:
    return compose_config(SMOKE + EVAL + [f"tune.split.root={HC18_TRAIN}", f"output_dir={out}", *SPACE, *extra],
                          config_name="tune")


def test_sampling_is_seeded_and_respects_the_space():
    space = {"generator": {"pred_iou_thresh": [0.5, 0.9], "points_per_side": [16, 48]},
             "filter.max_area": [0.2, 0.9], "retriever.name": ["crop", "box"],
             "refiner.multimask_output": [True, False],
             "generator.crop_n_layers": {"choices": [0, 1]}}
    first, again = sample_trials(space, 20, seed=3), sample_trials(space, 20, seed=3)
    assert first == again and first != sample_trials(space, 20, seed=4)
    assert sample_trials(dict(reversed(space.items())), 20, seed=3) == first  # key order does not matter
    for trial in first:
        assert 0.5 <= trial["generator.pred_iou_thresh"] <= 0.9
        assert type(trial["generator.points_per_side"]) is int and 16 <= trial["generator.points_per_side"] <= 48
        assert trial["retriever.name"] in ("crop", "box") and trial["refiner.multimask_output"] in (True, False)
        assert trial["generator.crop_n_layers"] in (0, 1)
    assert len({t["generator.points_per_side"] for t in first}) > 2  # a range, not the two end points


def test_same_seed_picks_the_same_parameters(tmp_path):
    chosen = [tune(tune_config(tmp_path / name), tmp_path / name) for name in ("a", "b")]
    assert chosen[0]["params"] == chosen[1]["params"] and chosen[0]["score"] == chosen[1]["score"]
    saved = yaml.safe_load((tmp_path / "a" / "tuned.yaml").read_text())
    assert saved["params"] == chosen[0]["params"] and saved["seed"] == 0
    assert saved["split"]["ids"] == ["002_HC"] and saved["split"]["root"] == str(HC18_TRAIN.resolve())
    trials = pd.read_csv(tmp_path / "a" / "trials.csv")
    assert len(trials) == 2 and trials["chosen"].sum() == 1
    assert {"generator.pred_iou_thresh", "generator.points_per_side", "filter.max_area", "dice_mean"} <= set(trials)
    assert trials.equals(pd.read_csv(tmp_path / "b" / "trials.csv"))
    for number in (0, 1):  # each trial is an ordinary run on the split, with its own values
        summary = json.loads((tmp_path / "a" / "trials" / str(number) / "summary.json").read_text())
        assert summary["dataset_root"] == str(HC18_TRAIN) and summary["n_total"] == 1
        assert summary["config"]["filter"]["max_area"] == trials.loc[number, "filter.max_area"]


def test_tuning_split_must_not_be_the_evaluated_images(tmp_path):
    with pytest.raises(TuningError, match="same folder"):
        tune(tune_config(tmp_path / "same", f"tune.split.root={HC18}"), tmp_path / "same")
    overlap = tmp_path / "split"  # another folder holding one of the evaluated images
    for sub, name in (("images", "100_HC.png"), ("masks", "100_HC_mask.png")):
        (overlap / sub).mkdir(parents=True)
        shutil.copy(HC18 / sub / name, overlap / sub)
    with pytest.raises(TuningError, match="100_HC"):
        tune(tune_config(tmp_path / "overlap", f"tune.split.root={overlap}"), tmp_path / "overlap")
    assert not (tmp_path / "same" / "trials").exists() and not (tmp_path / "overlap" / "trials").exists()
    with pytest.raises(TuningError, match="needs labelled images"):  # unlabelled: no Dice to choose by
        tune(tune_config(tmp_path / "unlabelled", "tune.split.mask_dir=null"), tmp_path / "unlabelled")
    assert not (tmp_path / "unlabelled" / "trials").exists()


def write_tuned(path, params: dict, ids: list[str]) -> str:
    path.write_text(yaml.safe_dump({"params": params, "score": {"dice_mean": 0.5, "trial": 1},
                                    "split": {"name": "folder", "root": str(HC18_TRAIN.resolve()), "ids": ids}}))
    return str(path)


def test_evaluation_applies_tuned_values_and_records_them(tmp_path):
    params = {"generator.pred_iou_thresh": 0.25, "generator.points_per_side": 2, "filter.max_area": 0.8}
    tuned = write_tuned(tmp_path / "tuned.yaml", params, ["002_HC"])
    out = tmp_path / "eval"
    summary = run(compose_config(SMOKE + EVAL + ["limit=1", f"output_dir={out}", f"tuned={tuned}"]), out)
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["generator"]["pred_iou_thresh"] == 0.25 and config["generator"]["points_per_side"] == 2
    assert config["filter"]["max_area"] == 0.8
    assert config["tuned"]["file"] == tuned and config["tuned"]["params"] == params
    assert summary["n_ok"] == 1
    plain = compose_config(SMOKE + EVAL + ["limit=1", f"output_dir={out}"])
    with pytest.raises(RuntimeError, match="another configuration"):  # a tuned run is not resumed untuned
        run(plain, out)


def test_tuned_file_errors(tmp_path):
    base = SMOKE + EVAL + ["limit=1", f"output_dir={tmp_path / 'out'}"]
    typo = write_tuned(tmp_path / "typo.yaml", {"generator.pred_iou_tresh": 0.3}, [])
    with pytest.raises(TuningError, match="pred_iou_tresh"):
        run(compose_config(base + [f"tuned={typo}"]), tmp_path / "out")
    leaked = write_tuned(tmp_path / "leaked.yaml", {"filter.max_area": 0.8}, ["100_HC", "208_HC"])
    with pytest.raises(TuningError, match="100_HC"):
        run(compose_config(base + [f"tuned={leaked}"]), tmp_path / "out")
    on_split = compose_config(SMOKE + ["dataset=folder", f"dataset.root={HC18_TRAIN}", "dataset.prompts=fetal_head",
                                       "limit=1", f"tuned={leaked}"])
    with pytest.raises(TuningError, match="same folder"):
        run(on_split, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Thresholds in the range the tiny random SAM's predicted IoUs fall in, two grids, more trials than grids.
REUSE_SPACE = ["tune.baseline=true", "tune.n_trials=5", "tune.n_images=2", "~tune.space",
               "+tune.space.generator.pred_iou_thresh=[0.0,0.06]",
               "+tune.space.generator.points_per_side={choices:[3,4]}",
               "+tune.space.filter.max_area=[0.5,0.95]", "+tune.space.retriever.name=[crop,box]"]


def test_image_by_image_tuning_gives_todays_files_with_one_decoding_per_image_and_grid(tmp_path, monkeypatch):
    from salip_bench.engines.sam_engine import SamV1Engine
    from salip_bench.evaluation.lightning_module import PredictModule
    from salip_bench.stages.generators.sam_everything import SamEverythingGenerator

    decodings, box_calls, scorings = [], {}, {}
    initialize, segment_boxes, score = SamEverythingGenerator.initialize, SamV1Engine.segment_boxes, PredictModule.score
    monkeypatch.setattr(SamEverythingGenerator, "initialize",
                        lambda self, image, *a: (decodings.append(self.grid["points_per_side"])
                                                 or initialize(self, image, *a)))
    monkeypatch.setattr(SamV1Engine, "segment_boxes",
                        lambda self, *a: box_calls.update(n=box_calls["n"] + 1) or segment_boxes(self, *a))
    monkeypatch.setattr(PredictModule, "score",
                        lambda self, *a: scorings.update(n=scorings["n"] + 1) or score(self, *a))
    files, calls = {}, {}
    for reuse in ("false", "true"):
        out = tmp_path / reuse
        decodings.clear()
        box_calls["n"] = scorings["n"] = 0
        tuned = tune(tune_config(out, *REUSE_SPACE, f"tune.reuse={reuse}"), out)
        files[reuse] = [(out / name).read_text() for name in ("trials.csv", "tuned.yaml")]
        counts = {side: decodings.count(side) for side in set(decodings)}
        trials = pd.read_csv(out / "trials.csv")
        grids = trials["generator.points_per_side"].tolist()
        assert counts == ({side: 2 * grids.count(side) for side in set(grids)} if reuse == "false"
                          else {side: 2 for side in set(grids)})  # 2 images
        calls[reuse] = (box_calls["n"], scorings["n"])
    # A trial that refines the same boxes, or predicts the same mask, as an earlier one on the image
    # prompts SAM and scores nothing again.
    assert calls == {"false": (8, 10), "true": (2, 4)}  # (2 trials of 10 retrieve nothing: no box prompt)
    assert len(set(grids)) == 2 and trials["n_ok"].tolist() == [2] * 5 and tuned["split"]["n_images"] == 2
    assert files["true"] == files["false"]
    for number in range(5):  # the trials' own runs agree too, sample by sample
        per_image = [pd.read_csv(tmp_path / reuse / "trials" / str(number) / "results.csv")
                     for reuse in ("false", "true")]
        columns = ["id", "dice", "iou", "nsd", "hd95", "n_candidates", "n_kept", "retrieved_scores",
                   "retrieved_boxes", "pred_area"]
        assert per_image[0][columns].equals(per_image[1][columns]) and per_image[0]["n_candidates"].sum() > 0
    resumed = tune(tune_config(tmp_path / "true", *REUSE_SPACE), tmp_path / "true")  # all done: nothing re-run
    assert resumed == tuned and (tmp_path / "true" / "trials.csv").read_text() == files["true"][0]


def test_image_by_image_trials_honour_the_runs_scoring_and_downscaling_settings(tmp_path):
    # A trial's records are those of its own run also where a setting acts outside the method: the NSD
    # tolerance and the downscaled evaluation of large images.
    extra = [*REUSE_SPACE, "tune.n_trials=2", "tune.n_images=1", "metrics.nsd_tolerance_mm=0.5",
             "dataset.max_side=300", "tune.split.max_side=300"]
    results = {}
    for reuse in ("false", "true"):
        out = tmp_path / reuse
        tune(tune_config(out, *extra, f"tune.reuse={reuse}"), out)
        results[reuse] = pd.read_csv(out / "trials" / "1" / "results.csv")
        summary = json.loads((out / "trials" / "1" / "summary.json").read_text())
        assert summary["config"]["metrics"]["nsd_tolerance_mm"] == 0.5
    columns = ["id", "dice", "nsd", "hd95", "pred_area", "retrieved_boxes"]
    assert results["true"][columns].equals(results["false"][columns]) and results["true"]["nsd"].notna().all()


def test_image_by_image_trials_report_and_count_the_refiners_own_engine(tmp_path):
    # A refiner with an engine of its own (MedSAM) is registered, counted and named per trial, as in its own run.
    extra = [*REUSE_SPACE, "tune.n_trials=2", "tune.n_images=1", "model@refiner_model=medsam_tiny"]
    summaries, files = {}, {}
    for reuse in ("false", "true"):
        out = tmp_path / reuse
        tune(tune_config(out, *extra, f"tune.reuse={reuse}"), out)
        files[reuse] = (out / "trials.csv").read_text()
        summaries[reuse] = json.loads((out / "trials" / "0" / "summary.json").read_text())
    assert files["true"] == files["false"]
    for summary in summaries.values():
        assert summary["stage_engines"] == {"generator": "sam_tiny", "refiner": "medsam_tiny", "retriever": "tiny"}
        assert summary["engines"]["medsam_tiny"]["stages"] == ["refiner"]
    # Trial 0 pays the passes of the image-by-image loop: SAM's and MedSAM's encoder, one each.
    assert summaries["true"]["engines"]["medsam_tiny"]["counters"]["encoder_passes"] == 1
    assert summaries["true"]["work"]["sam_encoder_passes"] == 2
