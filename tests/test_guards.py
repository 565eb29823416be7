"""Guards against SaLIP's known retrieval failures (``stages/retrievers/guards.py``): near-duplicate
picks within a class, exclusive retrieval across classes, and their ablation recipes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, CXR, SMOKE, compose_config, yaml_config
from salip_bench.evaluation.harness import run
from salip_bench.registry import RETRIEVERS, load_plugins
from salip_bench.stages.retrievers.guards import RetrievalGuards, retrieve_top_k
from salip_bench.types import Candidates

load_plugins()


def candidates(boxes: list[tuple[int, int, int, int]], size: int = 20) -> Candidates:
    masks = np.zeros((len(boxes), size, size), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return Candidates(masks, np.array(boxes, np.float32), masks.sum((1, 2)), np.ones(len(boxes), np.float32),
                      np.ones(len(boxes), np.float32))


# Two near-identical masks of the left lung (0, 1) score best; the right lung (2) third.
LUNGS = candidates([(0, 0, 8, 20), (0, 0, 9, 20), (12, 0, 20, 20)])
SIMILARITY = np.array([[0.30], [0.29], [0.25]])
BACKGROUND = np.array([0.1, 0.1, 0.1])


def test_without_guards_top_k_is_the_papers():
    out = retrieve_top_k(LUNGS, SIMILARITY, BACKGROUND, ["lung"], {"lung": 2})
    assert out.candidate_index.tolist() == [0, 1]  # two masks of one lung (Fig. 5)
    np.testing.assert_allclose(out.runner_up, [0.25, 0.25])
    np.testing.assert_allclose(out.background, [0.1, 0.1])


@pytest.mark.parametrize("threshold,picked", [(0.5, [0, 2]), (0.95, [0, 1]), (0.0, [0, 2])])
def test_dedup_skips_a_candidate_overlapping_one_already_picked(threshold, picked):
    out = retrieve_top_k(LUNGS, SIMILARITY, BACKGROUND, ["lung"], {"lung": 2}, RetrievalGuards(dedup_iou=threshold))
    assert out.candidate_index.tolist() == picked


def test_exclusive_retrieval_gives_each_candidate_to_its_best_class_or_the_background():
    sim = np.array([[0.30, 0.28], [0.26, 0.27], [0.20, 0.21]])  # left, right, both below background
    background = np.array([0.1, 0.1, 0.25])
    plain = retrieve_top_k(LUNGS, sim, background, ["left", "right"], {"left": 1, "right": 1})
    assert plain.candidate_index.tolist() == [0, 0]  # both classes pick the same candidate
    out = retrieve_top_k(LUNGS, sim, background, ["left", "right"], {"left": 1, "right": 1},
                         RetrievalGuards(exclusive=True))
    assert out.candidate_index.tolist() == [0, 1] and out.classes == ["left", "right"]
    only_background = retrieve_top_k(LUNGS, sim, np.ones(3), ["left", "right"], {"left": 1, "right": 1},
                                     RetrievalGuards(exclusive=True))
    assert len(only_background.candidates) == 0  # the organ is not here: nothing retrieved


@pytest.mark.parametrize("value", [-0.1, 1.5, "x"])
def test_a_dedup_threshold_outside_the_unit_interval_is_refused_in_one_line(value, tiny_clip):
    from salip_bench.accepts import ConfigError
    from salip_bench.evaluation.validation import validate
    from salip_bench.stages.retrievers.crop import CropRetriever

    with pytest.raises(ConfigError, match=r"^retriever\.dedup_iou=.*expected") as from_cli:
        validate({"retriever": {**yaml_config("retriever", "crop"), "dedup_iou": value}})
    with pytest.raises(ConfigError) as from_library:  # the same rule and message, built as a library
        CropRetriever(tiny_clip, {"lung": ["a lung."]}, {"lung": 1}, dedup_iou=value)
    assert str(from_cli.value) == str(from_library.value) and "\n" not in str(from_cli.value)


@pytest.mark.parametrize("name", RETRIEVERS.names())
def test_every_retriever_takes_the_guards_from_its_yaml(name, tiny_clip, cxr_sample):
    cfg = {**yaml_config("retriever", name), "dedup_iou": 0.0, "exclusive": False}
    retriever = RETRIEVERS.build(cfg, clip=tiny_clip, class_prompts={"lung": ["a lung"]}, top_k={"lung": 2})
    picks = retriever(cxr_sample.image, _full(cxr_sample))
    masks = picks.candidates.masks
    assert len(masks) == 2 and not (masks[0] & masks[1]).any()  # IoU > 0 between picks is refused


def _full(sample) -> Candidates:
    h, w = sample.image.shape[:2]
    masks = np.zeros((3, h, w), bool)
    masks[0, :, : w // 2] = True
    masks[1, :, : w // 2 + 4] = True
    masks[2, :, w // 2 + 4:] = True
    boxes = np.array([[0, 0, w // 2 - 1, h - 1], [0, 0, w // 2 + 3, h - 1], [w // 2 + 4, 0, w - 1, h - 1]], np.float32)
    return Candidates(masks, boxes, masks.sum((1, 2)), np.ones(3, np.float32), np.ones(3, np.float32))


@pytest.mark.parametrize("recipe,key,values", [("guard_dedup", "retriever.dedup_iou", "null,0.5"),
                                               ("guard_exclusive", "retriever.exclusive", "false,true")])
def test_guard_recipes_sweep_their_option_and_every_job_composes(recipe, key, values):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={recipe}"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {key: values}
    for value in values.split(","):
        composed = compose_config([f"experiment={recipe}", f"{key}={value}"])
        assert composed["retriever"][key.split(".")[1]] in (None, 0.5, False, True)


def test_a_guarded_run_keeps_the_stage_where_a_failure_started(tmp_path):
    out = tmp_path / "out"
    run(compose_config(SMOKE + ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs", "dataset.top_k=2",
                                "limit=1", "retriever.dedup_iou=0.5", "retriever.exclusive=true",
                                f"output_dir={out}"]), out)
    frame = pd.read_csv(out / "results.csv")
    assert frame[["oracle_dice", "retrieved_dice", "quality"]].notna().all().all()
