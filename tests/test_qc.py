"""Quality estimators (``salip_bench.qc``): every registered plugin, the run's quality columns,
SAM's own box scores, and the one-line refusals of bad ``qc`` settings."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import CONF, HC18, SMOKE, compose_config, yaml_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.validation import ConfigError, validate
from salip_bench.qc import signals as S
from salip_bench.qc.base import NO_SIGNAL_QUALITY
from salip_bench.qc.build import AUTO, NONE, build_gate, check_qc, fitting_estimators
from salip_bench.qc.settings import QualityConfigError
from salip_bench.registry import METHODS, QC, load_plugins
from salip_bench.types import Prediction, Sample

load_plugins()
ESTIMATORS = QC.names()
# Signals as each kind of method records them (plausible values; None where a config lacks one).
SIGNALS = {**{name: 0.8 for name in (*S.SAM_SIGNALS, S.MEAN_CONFIDENCE, S.REFINED_PRED_IOU, S.REFINED_STABILITY,
                                      S.RETRIEVED_REFINED_IOU, S.RETRIEVED_PRED_IOU, S.RETRIEVED_STABILITY)},
           S.RETRIEVAL_SCORE: 0.3, S.MARGIN_RUNNER_UP: 0.01, S.MARGIN_BACKGROUND: 0.02, S.N_KEPT: 5,
           S.MEAN_ENTROPY: 0.3, S.SAM3_SCORE: 0.7}


def sample_and_prediction(info: dict) -> tuple[Sample, Prediction]:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    return Sample("s", np.zeros((8, 8, 3), np.uint8), mask), Prediction(mask.copy(), info=dict(info))


def test_every_qc_yaml_is_a_registered_estimator_or_a_config_name():
    names = {p.stem for p in (CONF / "qc").glob("*.yaml")}
    assert names == set(ESTIMATORS) | {AUTO, NONE}
    for name in names:
        assert yaml_config("qc", name)["name"] == name


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_builds_from_its_yaml_and_scores_in_the_unit_interval(name):
    estimator = QC.build(yaml_config("qc", name))
    methods = [m for m in METHODS.names() if name in fitting_estimators(METHODS.get(m))]
    assert methods, f"no method gives what qc {name} needs"  # every estimator serves some method
    sample, prediction = sample_and_prediction(SIGNALS)
    quality = estimator(sample, prediction)
    assert 0.0 < quality <= 1.0
    # A degenerate signal (no candidates: None, NaN) is a defined quality, never NaN.
    for bad in (None, float("nan"), float("inf")):
        degenerate = {k: (bad if k in estimator.requires else v) for k, v in SIGNALS.items()}
        assert estimator(*sample_and_prediction(degenerate)) == NO_SIGNAL_QUALITY
    # Out-of-range signals are clipped.
    assert 0.0 <= estimator(*sample_and_prediction({k: 7.0 for k in SIGNALS})) <= 1.0


def test_default_estimator_of_every_method():
    defaults = {m: getattr(METHODS.get(m), "default_qc", None) for m in METHODS.names()}
    assert defaults["salip"] == defaults["sam_clip"] == "salip"
    assert defaults["gt_sam"] == defaults["unprompted_sam"] == "sam_iou"
    assert defaults["unet"] == "unet_entropy" and defaults["oracle"] is None and defaults["sam3_text"] == "sam3_score"
    for method, name in defaults.items():
        assert name is None or name in fitting_estimators(METHODS.get(method))


@pytest.mark.parametrize("method,qc,says", [
    ("salip", "unet_confidence", "estimators that fit salip: salip"),
    ("unet", "salip", "estimators that fit unet: unet_confidence, unet_entropy"),
    ("gt_sam", "unet_entropy", "estimators that fit gt_sam: sam_iou"),
    ("oracle", "sam_iou", "reads the ground truth"),
])
def test_an_estimator_that_does_not_fit_the_method_is_one_line_naming_what_fits(method, qc, says):
    with pytest.raises(QualityConfigError) as err:
        check_qc({"method": {"name": method}, "qc": {"name": qc, "abstain_below": None}})
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key,value", [("abstain_below", -0.1), ("abstain_below", 1.5), ("abstain_below", "high"),
                                       ("abstain_below", True), ("abstain_below", float("nan")),
                                       ("failure_dice", 2), ("failure_dice", None)])
def test_thresholds_outside_the_unit_interval_are_refused_in_one_line(key, value):
    cfg = compose_config(SMOKE)
    cfg["qc"][key] = value
    with pytest.raises(ConfigError, match=rf"^qc\.{key}=.*expected a number in \[0, 1\]"):
        validate(cfg)


def test_abstention_needs_a_score():
    with pytest.raises(QualityConfigError, match="needs a quality score"):
        check_qc({"method": {"name": "oracle"}, "qc": {"name": "auto", "abstain_below": 0.5}})


def test_the_cli_refuses_a_bad_threshold_before_loading_a_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "salip_bench.cli", *SMOKE, "qc.abstain_below=1.2",
                           f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and (
        "qc.abstain_below=1.2: expected a number in [0, 1] or null" in done.stdout + done.stderr)


@pytest.mark.parametrize("engine", ["sam_tiny", "sam2_tiny", "medsam_tiny"])
def test_box_engines_give_their_scores_next_to_the_same_masks(engine, hc18_sample):
    from salip_bench.evaluation.context import build_engine
    sam = build_engine({"model": yaml_config("model", engine), "weights": "random", "cache": {"enabled": False}},
                       "model")
    boxes = np.array([[100, 100, 400, 300], [50, 60, 200, 250]], np.float32)
    for multimask in (False, True):
        plain = sam.segment_boxes(hc18_sample.image, boxes, multimask)
        scored = sam.segment_boxes(hc18_sample.image, boxes, multimask, True)
        np.testing.assert_array_equal(scored.masks, plain)
        assert scored.predicted_iou.shape == scored.stability.shape == (2,)
        assert np.all((scored.stability >= 0) & (scored.stability <= 1)) and np.all(np.isfinite(scored.predicted_iou))


def hc18_root(tmp_path, ids=("100_HC", "208_HC")):
    import shutil
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(HC18 / "images" / f"{i}.png", tmp_path / "data" / "images")
        shutil.copy(HC18 / "masks" / f"{i}_mask.png", tmp_path / "data" / "masks")
    return tmp_path / "data"


@pytest.mark.parametrize("method,extra", [
    ("salip", []), ("sam_clip", []), ("gt_sam", []), ("unprompted_sam", []),
    ("salip", ["filter.max_area=1", "filter.unit=pixels"]),  # nothing kept: no candidates, quality 0
    ("unet", ["method.checkpoint=UNET"]),
    ("sam3_text", ["model=sam3_tiny", "method.min_score=0.0"]),
])
def test_runs_record_quality_in_the_unit_interval_and_their_signals(tmp_path, method, extra, unet_checkpoint):
    root, out = hc18_root(tmp_path), tmp_path / "out"
    extra = [e.replace("UNET", str(unet_checkpoint)) for e in extra]
    cfg = compose_config(SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.prompts=fetal_head",
                                  f"method={method}", f"output_dir={out}", *extra])
    run(cfg, out)
    frame = pd.read_csv(out / "results.csv")
    assert frame["quality"].between(0, 1).all() and frame["quality"].notna().all()
    offered = METHODS.get(method).qc_signals
    assert set(offered) <= set(frame.columns)
    if "filter.unit=pixels" in extra:
        assert (frame["n_kept"] == 0).all() and (frame["quality"] == 0).all()
        assert frame[S.RETRIEVAL_SCORE].isna().all()


def test_oracle_and_qc_none_record_no_quality(tmp_path):
    root = hc18_root(tmp_path, ["100_HC"])
    for overrides in (["method=oracle"], ["qc=none"]):
        out = tmp_path / overrides[0].replace("=", "_")
        run(compose_config(SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.prompts=fetal_head",
                                    f"output_dir={out}", *overrides]), out)
        frame = pd.read_csv(out / "results.csv")  # the dataset's one column set has it, empty
        assert frame["quality"].isna().all() and frame["abstained"].isna().all()
    assert build_gate({"method": {"name": "oracle"}, "qc": {"name": "auto"}}) is None


def test_a_refiner_engine_without_scores_still_refines_and_records_no_refined_scores(tiny_sam, hc18_sample):
    from salip_bench.stages.refiners.sam_box import SamBoxRefiner

    class PlainBoxes:  # a third-party engine with the box role but no with_scores
        identity = {"model": "plain"}

        def segment_boxes(self, image, boxes, multimask_output):
            return tiny_sam.segment_boxes(image, boxes, multimask_output)

    boxes = np.array([[100, 100, 400, 300]], np.float32)
    mask, scores = SamBoxRefiner(PlainBoxes()).refine_scored(hc18_sample.image, boxes)
    np.testing.assert_array_equal(mask, tiny_sam.segment_boxes(hc18_sample.image, boxes, False)[0])
    assert scores == {"predicted_iou": None, "stability": None}
    mask, scores = SamBoxRefiner(tiny_sam).refine_scored(hc18_sample.image, boxes)
    assert 0 <= scores["stability"] <= 1 and scores["predicted_iou"] is not None
