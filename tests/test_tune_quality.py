"""Label-free tuning (``tune.objective=quality``) and choosing the abstention threshold τ on the
labelled tuning split (``tune.abstain``), ``evaluation/tune_objective.py``."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import HC18, HC18_TRAIN, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.tune_objective import choose_abstention
from salip_bench.evaluation.tuned import TuningError
from salip_bench.tune import tune

EVAL = ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head"]
SPACE = ["tune.baseline=false", "tune.n_trials=2", "tune.n_images=2", "~tune.space",
         "+tune.space.filter.max_area=[0.5,0.95]"]


def tune_config(out, *extra: str) -> dict:
    return compose_config(SMOKE + EVAL + [f"tune.split.root={HC18_TRAIN}", f"output_dir={out}", *SPACE, *extra],
                          config_name="tune")


def test_quality_objective_tunes_without_masks_and_says_no_labels_were_used(tmp_path):
    out = tmp_path / "tune"
    tuned = tune(tune_config(out, "tune.objective=quality", "tune.split.mask_dir=null"), out)
    trials = pd.read_csv(out / "trials.csv")
    assert trials["dice_mean"].isna().all() and trials["quality_mean"].notna().all()
    assert tuned["score"]["trial"] == int(trials["quality_mean"].to_numpy().argmax())
    written = yaml.safe_load((out / "tuned.yaml").read_text())
    assert written["score"]["objective"] == "quality" and written["score"]["labels_used"] is False
    # An evaluation run with it records where its values came from, labels included.
    run_out = tmp_path / "eval"
    summary = run(compose_config(SMOKE + EVAL + ["limit=1", f"tuned={out / 'tuned.yaml'}", f"output_dir={run_out}"]),
                  run_out)
    assert summary["config"]["tuned"]["score"]["labels_used"] is False


def test_dice_objective_still_needs_masks_and_says_labels_were_used(tmp_path):
    with pytest.raises(TuningError, match="tune.objective=quality tunes without masks"):
        tune(tune_config(tmp_path / "u", "tune.split.mask_dir=null"), tmp_path / "u")
    with pytest.raises(TuningError, match="tune.objective='loss'"):
        tune(tune_config(tmp_path / "x", "tune.objective=loss"), tmp_path / "x")
    with pytest.raises(TuningError, match="records no quality"):
        tune(tune_config(tmp_path / "n", "tune.objective=quality", "qc=none"), tmp_path / "n")


def test_abstention_threshold_is_chosen_on_the_labelled_split_and_applied(tmp_path):
    out = tmp_path / "tune"
    tuned = tune(tune_config(out, "tune.abstain=true"), out)
    tau = tuned["params"]["qc.abstain_below"]
    assert 0.0 <= tau <= 1.0 and tuned["score"]["labels_used"] is True
    results = pd.read_csv(out / "trials" / str(tuned["score"]["trial"]) / "results.csv")
    trial_results = out / "trials" / str(tuned["score"]["trial"]) / "results.csv"
    assert tuned["score"]["abstention"] == choose_abstention(trial_results)
    assert tuned["score"]["abstention"]["n_images"] == len(results)
    run_out = tmp_path / "eval"
    run(compose_config(SMOKE + EVAL + ["limit=2", f"tuned={out / 'tuned.yaml'}", f"output_dir={run_out}"]), run_out)
    frame = pd.read_csv(run_out / "results.csv")
    assert "abstained" in frame.columns and (frame["abstained"] == (frame["quality"] < tau)).all()
    with pytest.raises(TuningError, match="tune.abstain chooses tau"):
        tune(tune_config(tmp_path / "u", "tune.abstain=true", "tune.objective=quality", "tune.split.mask_dir=null"),
             tmp_path / "u")


def test_tau_maximises_dice_with_abstention_smallest_on_a_tie(tmp_path):
    rows = [  # quality, dice, gt_area: low quality goes with failures and with an absent organ
        (0.9, 0.95, 100), (0.8, 0.9, 100), (0.3, 0.1, 100), (0.2, 0.0, 0), (0.1, 0.05, 100)]
    frame = pd.DataFrame([{"id": str(i), "status": "ok", "quality": q, "dice": d, "gt_area": g}
                          for i, (q, d, g) in enumerate(rows)])
    frame.to_csv(tmp_path / "results.csv", index=False)
    chosen = choose_abstention(tmp_path / "results.csv")
    # Brute force over every threshold on a fine grid: abstaining below (0.2, 0.3] keeps the three
    # predictions that score > 0 and gets the absent organ right (1.0): mean 2.95 / 5.
    grid = [t / 1000 for t in range(1001)]
    value = {t: sum(d if q >= t else float(g == 0) for q, d, g in rows) / len(rows) for t in grid}
    best = max(value.values())
    assert chosen["dice_mean_with_abstention"] == pytest.approx(best)
    assert best == pytest.approx(0.59) and 0.2 < chosen["abstain_below"] <= 0.3
    assert chosen["coverage"] == pytest.approx(0.6)
