"""Config checks that run before any model (or torch) is loaded.

Every bad setting is one :class:`ConfigError` line naming the key, the value and what is
expected; the command line turns it into exit status 2 within the time Hydra takes to compose the
config. Only this module's light imports run first: torch, lightning, segment_anything and
open_clip are imported after the config is checked. Plugins of other packages get the generic
checks (paths, run-level keys); their own keys are checked by their constructors.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from salip_bench.class_prompts import load_class_prompts


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line: key, value, what is expected."""


def resume_settings(resume: bool | Mapping | None) -> dict[str, bool]:
    """``resume`` as a dict: ``true``/``false`` (the short form) or ``{enabled, retry_failed, retry_crashed}``.

    enabled: skip samples already recorded in output_dir (default true); retry_failed: run failed
    samples again (default true); retry_crashed: also those the process died in (default false:
    a sample that kills the process would kill every resume).
    """
    settings = {"enabled": True, "retry_failed": True, "retry_crashed": False}
    if isinstance(resume, bool):
        return {**settings, "enabled": resume}
    if not isinstance(resume, Mapping):
        raise ConfigError(f"resume={resume!r}: expected true, false or {{enabled, retry_failed, retry_crashed}}")
    unknown = sorted(set(resume) - set(settings))
    if unknown:
        raise ConfigError(f"resume has unknown key(s) {unknown}: expected {sorted(settings)}")
    for key, value in resume.items():
        if not isinstance(value, bool):
            raise ConfigError(f"resume.{key}={value!r}: expected true or false")
    return {**settings, **resume}


# (test, what is expected) pairs for the common kinds of value.
def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low,
            f"an integer >= {low}")


def _number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> tuple[Callable, str]:
    def test(v: Any) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or v != v:
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
    return test, f"a number in {brackets}"


def _positive() -> tuple[Callable, str]:
    return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0), "a number > 0"


def _optional(check: tuple[Callable, str]) -> tuple[Callable, str]:
    return (lambda v: v is None or check[0](v)), f"null or {check[1]}"


def _bool() -> tuple[Callable, str]:
    return (lambda v: isinstance(v, bool)), "true or false"


UNIT = _number_in(0.0, 1.0)
# Keys of the built-in plugins: {group: {plugin name: {key: check}}}.
PLUGIN_KEYS: dict[str, dict[str, dict[str, tuple[Callable, str]]]] = {
    "generator": {"sam_everything": {
        "points_per_side": _int_at_least(1), "points_per_batch": _int_at_least(1),
        "pred_iou_thresh": UNIT, "stability_score_thresh": UNIT, "stability_score_offset": _number_in(0.0, 1e9),
        "box_nms_thresh": _number_in(0.0, 1.0, low_open=True), "crop_nms_thresh": _number_in(0.0, 1.0, low_open=True),
        "crop_n_layers": _int_at_least(0), "crop_overlap_ratio": _number_in(0.0, 1.0, high_open=True),
        "crop_n_points_downscale_factor": _int_at_least(1), "min_mask_region_area": _int_at_least(0)}},
    "retriever": {name: {"batch_size": _int_at_least(1), "workers": _optional(_int_at_least(1))}
                  for name in ("crop", "crop_expand", "box", "contour", "reverse_blur")},
    "method": {"unet": {"threshold": UNIT}, "gt_sam": {"min_component_area": _int_at_least(0)}},
    "dataset": {name: {"max_side": _optional(_int_at_least(64))} for name in ("folder", "cxr", "hc18", "cc359")},
}
PLUGIN_KEYS["retriever"]["box"]["thickness"] = _number_in(0.0, 1.0, low_open=True, high_open=True)
PLUGIN_KEYS["retriever"]["contour"]["thickness"] = _number_in(0.0, 1.0, low_open=True, high_open=True)
PLUGIN_KEYS["retriever"]["crop_expand"]["margin"] = _number_in(0.0, 1e9)
PLUGIN_KEYS["retriever"]["reverse_blur"]["sigma"] = _positive()
PLUGIN_KEYS["dataset"]["cc359"].update(axis=((lambda v: v in (0, 1, 2) and not isinstance(v, bool)), "0, 1 or 2"),
                                       cache_volumes=_int_at_least(1))
RUN_KEYS = {"limit": _optional(_int_at_least(1)), "num_workers": _int_at_least(0), "seed": _int_at_least(0),
            "fail_fast": _bool(), "save_masks": _bool(), "memory_limit_gb": _optional(_positive()),
            "weights": ((lambda v: v in ("pretrained", "random")), "pretrained or random")}
# Folders of a dataset, relative to its root ("." for the root itself).
DATASET_DIRS = ("image_dir", "mask_dir", "annotation_dir")


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: expected {expected}")


def _check(key: str, value: Any, check: tuple[Callable, str]) -> None:
    if value == MISSING:
        raise ConfigError(f"{key} is required (it is ???): expected {check[1]}")
    if not check[0](value):
        raise _fail(key, value, check[1])


def _existing_file(key: str, value: Any, what: str = "an existing file") -> None:
    if value in (None, ""):
        return
    if value == MISSING:
        raise ConfigError(f"{key} is required (it is ???): expected {what}")
    if not Path(str(value)).expanduser().is_file():
        raise ConfigError(f"{key}={value}: no such file ({Path(str(value)).expanduser().resolve()}); expected {what}")


def validate(cfg: DictConfig | Mapping) -> dict:
    """Check an evaluation config; returns it as a plain dict (``???`` left as the string).

    Raises:
        ConfigError: the first bad setting, in one line.
    """
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as err:  # noqa: BLE001 - an interpolation that does not resolve
            raise ConfigError(f"config does not resolve: {err}".splitlines()[0]) from err
    cfg = dict(cfg)
    for key, check in RUN_KEYS.items():
        if key in cfg:
            _check(key, cfg[key], check)
    resume_settings(cfg.get("resume", True))
    cache = cfg.get("cache") or {}
    if isinstance(cache, Mapping) and cache.get("max_gb") is not None:
        _check("cache.max_gb", cache["max_gb"], _positive())
    for group, plugins in PLUGIN_KEYS.items():
        section = cfg.get(group)
        if isinstance(section, Mapping):
            for key, check in plugins.get(section.get("name"), {}).items():
                if key in section:
                    _check(f"{group}.{key}", section[key], check)
    _check_filter(cfg.get("filter"))
    _check_qc(cfg)  # qc: qc.abstain_below / qc.failure_dice in [0, 1], an estimator that fits the method
    for group in ("model", "refiner_model", "clip", "method"):
        section = cfg.get(group)
        if isinstance(section, Mapping) and "checkpoint" in section:
            _existing_file(f"{group}.checkpoint", section["checkpoint"], "the path of an existing checkpoint file")
    if isinstance(cfg.get("tuned"), str):  # once applied, it is the dict of what was applied
        _existing_file("tuned", cfg["tuned"], "a tuned.yaml written by salip-bench-tune")
    if isinstance(cfg.get("dataset"), Mapping):
        # Whether the method needs dataset.prompts is its class's declaration (check_method_inputs),
        # read once the plugins are imported; a set prompts value is checked here whatever the method.
        check_dataset(cfg["dataset"], needs_prompts=False)
    return cfg


def check_method_inputs(method: type, dataset: Mapping) -> None:
    """The dataset settings a method class declares it reads: ``needs_prompts = True`` (it retrieves or
    prompts with the organ's sentences) makes ``dataset.prompts`` required.

    Validation itself stays free of torch, so the harness calls this once the method's class is
    known (``METHODS.get``); the messages are those of :func:`check_dataset`.

    Args:
        method: the registered method class.
        dataset: the run's dataset config.

    Raises:
        ConfigError: ``dataset.prompts`` is unset or bad for a method that needs it.
    """
    if getattr(method, "needs_prompts", False):
        check_prompts(dataset, required=True)


def _check_filter(section: Any) -> None:
    if not isinstance(section, Mapping) or section.get("name") != "area":
        return
    unit = section.get("unit", "fraction")
    if unit not in ("fraction", "pixels"):
        raise _fail("filter.unit", unit, "fraction or pixels")
    if "max_area" in section:
        _check("filter.max_area", section["max_area"],
               _number_in(0.0, 1.0, low_open=True) if unit == "fraction" else _positive())


def check_dataset(dataset: Mapping, needs_prompts: bool = True) -> None:
    """Folders exist, the image folder lists images, prompts parse, top_k >= 1 for every class.

    Args:
        dataset: the dataset config.
        needs_prompts: a missing (``???``/null) ``prompts`` is an error; else only a set one is checked.

    Raises:
        ConfigError: the first bad setting, in one line.
    """
    root = dataset.get("root")
    if root == MISSING or root in (None, ""):
        raise ConfigError(f"dataset.root is required (it is {root}): expected the dataset's folder")
    root_path = Path(str(root)).expanduser()
    if not root_path.is_dir():
        raise ConfigError(f"dataset.root={root}: folder {root_path.resolve()} does not exist; expected the dataset's folder")
    for key in DATASET_DIRS:
        sub = dataset.get(key)
        if isinstance(sub, str) and sub != MISSING and not (root_path / sub).is_dir():
            raise ConfigError(f"dataset.{key}={sub}: folder {(root_path / sub).resolve()} does not exist; "
                              "expected a folder inside dataset.root")
    if dataset.get("pixel_size_csv"):
        _existing_file("dataset.pixel_size_csv", str(root_path / str(dataset["pixel_size_csv"])),
                       "a CSV file inside dataset.root")
    _check_lists_images(dataset, root_path)
    check_prompts(dataset, required=needs_prompts)


def check_prompts(dataset: Mapping, required: bool = True) -> None:
    """``dataset.prompts`` parses (and ``top_k`` gives every class of it a k >= 1).

    Args:
        dataset: the dataset config.
        required: a missing (``???``/null) ``prompts`` is an error; else only a set one is checked.

    Raises:
        ConfigError: the first bad setting, in one line.
    """
    if "prompts" in dataset and (required or dataset["prompts"] not in (None, "", MISSING)):
        try:
            classes = list(load_class_prompts(dataset["prompts"]))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if "top_k" in dataset:
            check_top_k(dataset["top_k"], classes, dataset["prompts"])


def _check_lists_images(dataset: Mapping, root: Path) -> None:
    image_dir = dataset.get("image_dir")
    if not isinstance(image_dir, str):
        return
    folder = root / image_dir
    pattern = dataset.get("image_pattern")
    if isinstance(pattern, str):
        found = next(iter(folder.glob(pattern)), None) is not None
        wanted = f"files matching {pattern!r}"
    else:
        suffixes = dataset.get("suffixes") or ((".png",) if dataset.get("name") == "hc18" else None)
        if not suffixes:
            return
        lowered = {str(s).lower() for s in suffixes}
        found = any(p.suffix.lower() in lowered for p in folder.iterdir())
        wanted = f"images with suffix {sorted(lowered)}"
    if not found:
        raise ConfigError(f"dataset.image_dir={image_dir}: folder {folder.resolve()} has no {wanted}; "
                          "expected a folder of images")


def check_top_k(top_k: Any, classes: list[str], prompts: Any) -> None:
    """``dataset.top_k``: one integer >= 1, or a mapping giving each class of the prompt set one."""
    expected = "an integer >= 1 (candidates retrieved per class), or a mapping {class: integer >= 1}"
    at_least_one = _int_at_least(1)[0]
    if isinstance(top_k, Mapping):
        missing = sorted(set(classes) - set(top_k))
        if missing:
            raise ConfigError(f"dataset.top_k={dict(top_k)}: no k for class(es) {missing} of prompt set {prompts!r}; "
                              f"expected {expected}")
        for name in classes:
            if not at_least_one(top_k[name]):
                raise ConfigError(f"dataset.top_k.{name}={top_k[name]!r}: expected an integer >= 1")
    elif not at_least_one(top_k):
        raise _fail("dataset.top_k", top_k, expected)


def _check_qc(cfg: Mapping) -> None:
    """The ``qc`` thresholds (:func:`salip_bench.qc.settings.check_qc_settings`) as a one-line
    :class:`ConfigError`; whether the estimator fits the method is checked once plugins are imported."""
    from salip_bench.qc.settings import QualityConfigError, check_qc_settings
    try:
        check_qc_settings(cfg)
    except QualityConfigError as err:
        raise ConfigError(str(err)) from None
