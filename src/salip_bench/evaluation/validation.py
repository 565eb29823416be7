"""Config checks that run before any model (or torch) is loaded.

Every bad setting is one :class:`ConfigError` line naming the key, the value and what is
expected; the command line turns it into exit status 2 within the time Hydra takes to compose the
config. Only this module's light imports run first: torch, lightning, segment_anything and
open_clip are imported after the config is checked. A built-in plugin's keys are checked by the rules
its module declares (``ACCEPTS``, read from the source by :func:`salip_bench.accepts.read_accepts`, the
same rules its constructor checks); plugins of other packages get the generic checks (paths, run-level
keys) here and their own from their constructors.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from salip_bench.accepts import (
    WEIGHTS,
    ConfigError,
    Flag,
    IntAtLeast,
    Nullable,
    Positive,
    Rule,
    check_settings,
    read_accepts,
)
from salip_bench.class_prompts import load_class_prompts, top_k_per_class


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


RUN_KEYS: dict[str, Rule] = {"limit": Nullable(IntAtLeast(1)), "num_workers": IntAtLeast(0), "seed": IntAtLeast(0),
                             "fail_fast": Flag(), "save_masks": Flag(), "memory_limit_gb": Nullable(Positive()),
                             "weights": WEIGHTS}
# Where a built-in plugin of each group lives (a file per plugin: <package>/<name>.py, its ``ACCEPTS``).
PLUGIN_PACKAGES = {"generator": "salip_bench.stages.generators", "filter": "salip_bench.stages.filters",
                   "retriever": "salip_bench.stages.retrievers", "refiner": "salip_bench.stages.refiners",
                   "method": "salip_bench.methods", "dataset": "salip_bench.datasets"}
# The dataset group's run settings (every dataset): declared by DatasetSettings.
DATASET_SETTINGS_MODULE = "salip_bench.datasets.settings"
# Folders of a dataset, relative to its root ("." for the root itself).
DATASET_DIRS = ("image_dir", "mask_dir", "annotation_dir")


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
        except Exception as err:  # an interpolation that does not resolve
            raise ConfigError(f"config does not resolve: {err}".splitlines()[0]) from err
    cfg = dict(cfg)
    for key, rule in RUN_KEYS.items():
        if key in cfg:
            rule.check(key, cfg[key])
    resume_settings(cfg.get("resume", True))
    cache = cfg.get("cache") or {}
    if isinstance(cache, Mapping) and cache.get("max_gb") is not None:
        Positive().check("cache.max_gb", cache["max_gb"])
    for group in PLUGIN_PACKAGES:
        section = cfg.get(group)
        if isinstance(section, Mapping):
            check_settings(group, plugin_accepts(group, section.get("name")), section)
    _check_qc(cfg)  # qc.abstain_below / qc.failure_dice in [0, 1]; the estimator's fit once plugins load
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
        check_prompts(dataset, required=not dataset.get("organs"))  # organs by name: the organ library


def plugin_accepts(group: str, name: Any) -> dict[str, Rule]:
    """What the built-in plugin ``name`` of ``group`` declares it accepts (its module's ``ACCEPTS``, read
    without importing it; every dataset adds the run settings of DatasetSettings); ``{}`` for a plugin
    of another package, which its constructor checks.

    Args:
        group: a config group (``filter``, ``retriever``, ...).
        name: the plugin's registered name.
    """
    if not isinstance(name, str) or not name.isidentifier():
        return {}
    accepts = read_accepts(f"{PLUGIN_PACKAGES[group]}.{name}")
    return {**read_accepts(DATASET_SETTINGS_MODULE), **accepts} if group == "dataset" else accepts


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
        raise ConfigError(f"dataset.root={root}: folder {root_path.resolve()} does not exist; "
                          "expected the dataset's folder")
    for key in DATASET_DIRS:
        sub = dataset.get(key)
        if isinstance(sub, str) and sub != MISSING and not (root_path / sub).is_dir():
            raise ConfigError(f"dataset.{key}={sub}: folder {(root_path / sub).resolve()} does not exist; "
                              "expected a folder inside dataset.root")
    if dataset.get("pixel_size_csv"):
        _existing_file("dataset.pixel_size_csv", str(root_path / str(dataset["pixel_size_csv"])),
                       "a CSV file inside dataset.root")
    _check_lists_images(dataset, root_path)
    check_prompts(dataset, required=needs_prompts and not dataset.get("organs"))  # organs: the organ library


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
            top_k_per_class(dataset["top_k"], classes, dataset["prompts"])


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


def _check_qc(cfg: Mapping) -> None:
    """The ``qc`` thresholds (:func:`salip_bench.qc.settings.check_qc_settings`) as a one-line
    :class:`ConfigError`; whether the estimator fits the method is checked once plugins are imported."""
    from salip_bench.qc.settings import QualityConfigError, check_qc_settings
    try:
        check_qc_settings(cfg)
    except QualityConfigError as err:
        raise ConfigError(str(err)) from None
