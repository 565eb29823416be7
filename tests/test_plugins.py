"""Every registered plugin is built from its own yaml (conf/<group>/<name>.yaml) and run once."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from conftest import CONF, CXR, HC18, MRI, SHARED, SMOKE, compose_config, yaml_config
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.engines.builder import build_engine
from salip_bench.evaluation.harness import build_context
from salip_bench.masks import gt_boxes, mask_box
from salip_bench.registry import DATASET_SETTINGS, ENGINES, REGISTRIES, RETRIEVERS, PluginError, load_plugins
from salip_bench.stages.refiners.none import NoRefiner
from salip_bench.stages.refiners.sam_box import SamBoxRefiner
from salip_bench.stages.retrievers.visual_prompts import blurred_background, masked_crop
from salip_bench.types import Candidates, Prediction, Retrieved, Sample

load_plugins()
GROUPS = {"generator": "generator", "filter": "filter", "retriever": "retriever", "refiner": "refiner",
          "dataset": "dataset", "method": "method"}
PLUGINS = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()
           if registry.get(name).__module__.startswith("salip_bench.")]
# Where each dataset's real layout lives in ../shared/data.
DATASET_ROOTS = {"folder": {"root": str(CXR), "prompts": "lungs"},
                 "cxr": {"root": str(CXR), "image_dir": "images"},
                 "hc18": {"root": str(HC18), "image_dir": "images", "annotation_dir": "annotations"},
                 "cc359": {"root": str(MRI), "image_dir": ".", "mask_dir": ".", "image_pattern": "*_T1w.nii.gz",
                           "mask_pattern": "{id}_brainmask.nii.gz", "slice_range": [40, 42]},
                 "volumes": {"root": str(MRI), "image_pattern": "*_T1w.nii.gz", "mask_pattern": "{id}_brainmask.nii.gz",
                             "slice_range": [40, 42], "prompts": "brain"},
                 "nnunet": {"root": str(SHARED / "ct_abdomen"), "organs": ["liver"], "slice_range": [12, 14]}}
METHOD_OVERRIDES = {"unet": ["method.checkpoint=${oc.env:SALIP_TEST_UNET_CKPT}"],
                    "sam3_text": ["model=sam3_tiny", "method.min_score=0.0"],
                    "precomputed": [f"method.dir={CXR / 'masks'}", "method.pattern='{stem}_mask.png'"]}
# Methods that bring their own engine (built from model=...) instead of the SAM v1 fixture.
OWN_ENGINE_METHODS = {"sam3_text"}
# Methods that answer a slice from its whole volume: their dataset (a few slices of mri_brain).
VOLUME_METHODS = {"salip_propagate": ["dataset=volumes", f"dataset.root={MRI}", "dataset.image_pattern='*_T1w.nii.gz'",
                                      "dataset.mask_pattern='{id}_brainmask.nii.gz'", "dataset.prompts=brain",
                                      "dataset.slice_range=[44,48]", "method.count=1"]}


def candidates_from(sample: Sample) -> Candidates:
    """Three plausible candidates: the GT's left half, its right half, and the whole image."""
    height, width = sample.mask.shape
    left, right = sample.mask.copy(), sample.mask.copy()
    left[:, width // 2:] = False
    right[:, : width // 2] = False
    masks = np.stack([left, right, np.ones_like(sample.mask)])
    boxes = np.array([[0, 0, width // 2, height - 1], [width // 2, 0, width - 1, height - 1],
                      [0, 0, width - 1, height - 1]], np.float32)
    return Candidates(masks, boxes, masks.sum((1, 2)), np.ones(3, np.float32), np.ones(3, np.float32))


def test_every_plugin_has_its_yaml():
    for kind, name in PLUGINS:
        path = CONF / GROUPS[kind] / f"{name}.yaml"
        assert path.is_file(), f"registered {kind} {name!r} has no {path}"
        assert yaml_config(GROUPS[kind], name)["name"] == name


@pytest.mark.parametrize("kind,name", PLUGINS, ids=[f"{k}-{n}" for k, n in PLUGINS])
def test_plugin_builds_from_its_yaml_and_runs(kind, name, tiny_sam, tiny_clip, cxr_sample, request, monkeypatch):
    registry = REGISTRIES[kind]
    cfg = yaml_config(GROUPS[kind], name)
    image = cxr_sample.image
    if kind == "generator":
        cfg.update(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        out = registry.build(cfg, sam=tiny_sam)(image)
        assert isinstance(out, Candidates) and len(out) > 0 and out.masks.shape[1:] == image.shape[:2]
    elif kind == "filter":
        kept = registry.build(cfg)(candidates_from(cxr_sample), image.shape[:2])
        assert isinstance(kept, Candidates) and 1 <= len(kept) <= 3
    elif kind == "retriever":
        retriever = registry.build(cfg, clip=tiny_clip, class_prompts={"lung": ["a dark lung field"]},
                                   top_k={"lung": 2})
        out = retriever(image, candidates_from(cxr_sample))
        assert isinstance(out, Retrieved) and len(out.candidates) == 2 and out.classes == ["lung", "lung"]
        assert np.all(np.abs(out.scores) <= 1.0 + 1e-6)
    elif kind == "refiner":
        picked = candidates_from(cxr_sample).select(np.array([0, 1]))
        mask = registry.build(cfg, sam=tiny_sam)(image, Retrieved(picked, ["lung"] * 2, np.ones(2), np.arange(2)))
        assert mask.shape == image.shape[:2] and mask.dtype == bool
    elif kind == "dataset":
        cfg.update(DATASET_ROOTS[name])
        dataset = registry.build(cfg)
        sample = dataset[0]
        assert sample.error is None, sample.error
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
        assert sample.mask.dtype == bool and sample.mask.shape == sample.image.shape[:2] and sample.mask.any()
        settings = DatasetSettings.from_config(cfg)
        assert settings.class_prompts() and set(settings.top_k_per_class()) == set(settings.class_prompts())
    elif kind == "method":
        if name == "unet":
            monkeypatch.setenv("SALIP_TEST_UNET_CKPT", str(request.getfixturevalue("unet_checkpoint")))
        if name in VOLUME_METHODS:  # a whole-volume method: a few slices of mri_brain, SAM 2.1 propagates
            full = compose_config(SMOKE + [f"method={name}", "model=sam2_tiny", *VOLUME_METHODS[name]])
        else:
            full = compose_config(SMOKE + [f"method={name}", "dataset=folder", f"dataset.root={CXR}",
                                           "dataset.prompts=lungs", "dataset.top_k=2", *METHOD_OVERRIDES.get(name, [])])
        dataset = REGISTRIES["dataset"].build(full["dataset"])
        sam = None if name in OWN_ENGINE_METHODS or name in VOLUME_METHODS else tiny_sam
        sample = dataset[0] if name in VOLUME_METHODS else cxr_sample
        prediction = registry.build(full["method"], **build_context(full, dataset, sam, tiny_clip))(sample)
        assert isinstance(prediction, Prediction) and prediction.mask.shape == sample.image.shape[:2]
    else:
        pytest.fail(f"no runner for plugin kind {kind}")


# What build_context injects by parameter name: never a config key, so no yaml states it.
INJECTED = {"sam", "clip", "class_prompts", "top_k", "generator", "filter", "retriever", "refiner", "read_prediction",
            "propagator_sam", "volume_frames", "run_organs"}
YAMLS = [(kind, path.stem) for kind in GROUPS for path in sorted((CONF / GROUPS[kind]).glob("*.yaml"))]


def plain(value):
    """Tuples as lists, as a yaml writes them."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("kind,yaml_name", YAMLS, ids=[f"{k}-{n}" for k, n in YAMLS])
def test_yaml_states_every_setting_and_agrees_with_the_signature(kind, yaml_name):
    """Defaults live in the constructor's signature (a visual prompt's: its function's). The plugin's
    own yaml (``<group>/<name>.yaml``) names each settable argument, so it can be overridden, with
    that default; a preset (hc18_demo, mni152_demo) states the required ones and what it changes."""
    cfg = yaml_config(GROUPS[kind], yaml_name)
    cfg.pop("defaults", None)  # Hydra's: the stage choices a method's yaml makes (sam_clip: refiner none)
    registry = REGISTRIES[kind]
    cls = registry.get(cfg.pop("name"))
    params = {n: p for n, p in inspect.signature(cls).parameters.items()
              if n not in INJECTED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = sorted(set(cfg) - set(params) - set(registry.settings))
    assert not unknown, f"conf/{GROUPS[kind]}/{yaml_name}.yaml: keys {unknown} are no argument of {cls.__name__}"
    preset = yaml_name != cls.registered_name
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    omitted = sorted((required if preset else set(params)) - set(cfg))
    assert not omitted, f"conf/{GROUPS[kind]}/{yaml_name}.yaml omits {omitted} of {cls.__name__}"
    if preset:
        return
    for key, param in params.items():
        if param.default is not inspect.Parameter.empty:
            assert plain(cfg[key]) == plain(param.default), \
                (f"conf/{GROUPS[kind]}/{yaml_name}.yaml: {key}={cfg[key]!r}, "
                 f"but {cls.__name__} defaults to {param.default!r}")


@pytest.mark.parametrize("yaml_name", [n for k, n in YAMLS if k == "dataset"])
def test_dataset_yaml_declares_the_run_settings(yaml_name):
    """prompts / top_k / max_side are the run's (DatasetSettings), stated in every dataset yaml."""
    cfg = yaml_config("dataset", yaml_name)
    assert {"prompts", "top_k", "max_side"} <= set(cfg)
    assert not set(DATASET_SETTINGS) & set(inspect.signature(REGISTRIES["dataset"].get(cfg["name"])).parameters)
    assert tuple(DatasetSettings.__dataclass_fields__) == DATASET_SETTINGS


def test_sam_clip_composes_the_configured_refiner(tiny_sam, tiny_clip, cxr_sample):
    """sam_clip is salip with refiner=none by its yaml; an explicit refiner= is used, not ignored."""
    base = SMOKE + ["method=sam_clip", "dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs"]
    for overrides, refiner in (([], NoRefiner), (["refiner=sam_box"], SamBoxRefiner)):
        full = compose_config(base + overrides)
        method = REGISTRIES["method"].build(full["method"], **build_context(full, None, tiny_sam, tiny_clip))
        assert isinstance(method.refiner, refiner)
    salip = compose_config(SMOKE + ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs"])
    assert salip["refiner"]["name"] == "sam_box"  # the default stays salip's


def test_method_boxes_are_inclusive_like_the_ground_truth_boxes(cxr_sample):
    """One box convention (inclusive XYXY): the U-Net's box of a one-component mask is its GT box."""
    mask = np.zeros((40, 50), bool)
    mask[5:21, 7:30] = True
    np.testing.assert_array_equal(mask_box(mask), gt_boxes(mask))
    np.testing.assert_array_equal(mask_box(mask), [[7, 5, 29, 20]])
    assert mask_box(np.zeros((4, 4), bool)).shape == (0, 4)


def test_unknown_plugin_lists_the_known_ones():
    with pytest.raises(PluginError, match="known retrievers: box, contour, crop"):
        REGISTRIES["retriever"].get("crpo")


def test_typo_in_plugin_yaml_key_is_an_error(tiny_sam):
    cfg = yaml_config("generator", "sam_everything") | {"points_per_sid": 8}
    with pytest.raises(PluginError, match="points_per_sid"):
        REGISTRIES["generator"].build(cfg, sam=tiny_sam)


@pytest.mark.parametrize("name", [n for k, n in PLUGINS if k == "retriever"])
def test_retriever_scores_match_one_prompt_at_a_time_for_any_worker_count(name, tiny_clip, cxr_sample):
    """Threads and batches change only the speed: each score equals CLIP on that one visual prompt."""
    cfg = yaml_config("retriever", name)
    candidates = candidates_from(cxr_sample)
    scores = {}
    for workers in (1, 3):
        retriever = RETRIEVERS.build({**cfg, "workers": workers, "batch_size": 2}, clip=tiny_clip,
                                     class_prompts={"lung": ["a dark lung field"]}, top_k={"lung": 1})
        scores[workers] = retriever.scores(cxr_sample.image, candidates)
    one_by_one = np.concatenate([
        (tiny_clip.encode_images([retriever.visual_prompt(cxr_sample.image, mask, box)]) @ retriever.prototypes.T)
        .numpy() for mask, box in zip(candidates.masks, candidates.boxes)])
    np.testing.assert_array_equal(scores[1], scores[3])
    np.testing.assert_allclose(scores[1], one_by_one, atol=1e-5)


def test_masked_crop_is_the_image_times_the_mask_in_its_box(cxr_sample):
    candidates = candidates_from(cxr_sample)
    mask, box = candidates.masks[0], candidates.boxes[0]
    x0, y0, x1, y1 = box.astype(int)
    expected = cxr_sample.image[y0:y1 + 1, x0:x1 + 1] * mask[y0:y1 + 1, x0:x1 + 1, None]
    np.testing.assert_array_equal(masked_crop(cxr_sample.image, mask, box), expected)


def test_reverse_blur_blurs_once_per_image(tiny_clip, cxr_sample, monkeypatch):
    import salip_bench.stages.retrievers.reverse_blur as module
    blurs = []
    monkeypatch.setattr(module, "blurred_background", lambda *args: blurs.append(1) or blurred_background(*args))
    retriever = RETRIEVERS.build(yaml_config("retriever", "reverse_blur"), clip=tiny_clip,
                                 class_prompts={"lung": ["a dark lung field"]}, top_k={"lung": 1})
    state = dict(vars(retriever))
    tiny_clip.embedding_cache.clear()  # the shared engine may hold these candidates from an earlier test
    retriever.scores(cxr_sample.image, candidates_from(cxr_sample))
    assert len(blurs) == 1  # once for three candidates
    retriever.scores(cxr_sample.image, candidates_from(cxr_sample))
    assert len(blurs) == 1  # every embedding cached: nothing drawn, no blur
    assert vars(retriever).keys() == state.keys() and all(vars(retriever)[k] is v for k, v in state.items())


def test_retriever_parameters_are_its_visual_prompt_function_keywords(tiny_clip):
    """A built-in retriever is its visual-prompt function: the function's keywords are the config
    keys (a typo is refused), and the embedding cache key names the function and its values."""
    context = {"clip": tiny_clip, "class_prompts": {"lung": ["a dark lung field"]}, "top_k": {"lung": 1}}
    built = RETRIEVERS.build({"name": "reverse_blur", "sigma": 0.05}, **context)
    assert built.params == {"sigma": 0.05, "grey": True}
    assert built.prompt_signature() == {"kind": "salip_bench.stages.retrievers.reverse_blur.reverse_blur_prompt",
                                        "sigma": 0.05, "grey": True}
    with pytest.raises(PluginError, match=r"unknown config key\(s\) \['sigm'\]"):
        RETRIEVERS.build({"name": "reverse_blur", "sigm": 0.05}, **context)
    with pytest.raises(PluginError, match="margin"):
        RETRIEVERS.build({"name": "crop", "margin": 0.2}, **context)


def engine_test_entries() -> list[tuple[str, str, str]]:
    """(engine, config group, tiny yaml) for every registered engine: its ``*tiny*`` yaml in conf/model or conf/clip."""

    found = {}
    for group in ("model", "clip"):
        for path in sorted((CONF / group).glob("*.yaml")):
            engine = yaml_config(group, path.stem).get("engine")
            if engine is not None and "tiny" in path.stem:
                found.setdefault(engine, (group, path.stem))
    return [(name, *found.get(name, ("-", "-"))) for name in ENGINES.names()]


def test_every_model_yaml_names_a_registered_engine():

    for group in ("model", "clip"):
        for path in sorted((CONF / group).glob("*.yaml")):
            engine = yaml_config(group, path.stem).get("engine")
            assert engine in ENGINES.names(), f"{path}: engine {engine!r}"


@pytest.mark.parametrize("engine,group,name", engine_test_entries(), ids=[e[0] for e in engine_test_entries()])
def test_engine_builds_from_its_tiny_yaml_and_serves_its_roles(engine, group, name, cxr_sample):
    from salip_bench.engines.roles import (
        BoxPromptSegmenter,
        Engine,
        EverythingGenerator,
        ImageTextEmbedder,
        TextPromptSegmenter,
    )

    assert name != "-", f"engine {engine!r} has no tiny yaml in conf/model or conf/clip"
    built = build_engine(yaml_config(group, name), "random", group)
    assert isinstance(built, Engine) and built.identity["weights"] == "random"
    image = cxr_sample.image
    roles = [r for r in (EverythingGenerator, BoxPromptSegmenter, ImageTextEmbedder, TextPromptSegmenter)
             if isinstance(built, r)]
    assert roles, f"engine {engine} has none of the roles this test knows"
    if EverythingGenerator in roles:
        candidates = built.everything(image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        assert (isinstance(candidates, Candidates) and len(candidates) > 0
                and candidates.masks.shape[1:] == image.shape[:2])
    if BoxPromptSegmenter in roles:
        masks = built.segment_boxes(image, np.array([[50, 60, 300, 400]], np.float32), False)
        assert masks.shape == (1, *image.shape[:2]) and masks.dtype == bool
    if ImageTextEmbedder in roles:
        images, texts = built.encode_images([image, image[:40]]), built.encode_texts(["a lung", "the fetal head"])
        assert images.shape == (2, built.embed_dim) and texts.shape == (2, built.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(images.numpy(), axis=1), 1.0, atol=1e-5)
        assert built.counters() == {"images_encoded": 2, "texts_encoded": 2}
    if TextPromptSegmenter in roles:
        masks, scores, boxes = built.segment_text(image, "lungs", min_score=0.0, max_instances=2)
        assert masks.shape == (2, *image.shape[:2]) and scores.shape == (2,) and boxes.shape == (2, 4)
        assert built.counters()["encoder_passes"] == 1
    assert all(isinstance(v, int) for v in built.counters().values())
    built.reset()
    assert not any(built.counters().values())
