"""Parameters chosen by ``salip-bench-tune``, applied to an evaluation run with ``tuned=OUT/tuned.yaml``.

A ``tuned.yaml`` holds ``params`` (dotted config key → value) and the identity of the labelled split
they were chosen on (its root and image ids). Applying it merges the values into the run's config
before the resume fingerprint is computed (a tuned run never resumes an untuned one) and refuses an
evaluation dataset that shares its root or any image id with that split: tuning on the images
being scored would make the numbers optimistic.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from salip_bench.registry import DATASETS

TUNED_FILE = "tuned.yaml"


class TuningError(ValueError):
    """A tuning setup or a tuned file that cannot be used as asked; the message says why."""


_ABSENT = object()


def _as_config(cfg: Mapping, key: str) -> DictConfig:
    """``cfg`` as a DictConfig for looking up ``key``: a plain dict's top-level entry of ``key`` only,
    so that a lookup wraps one config group, not the whole run config (tuning sets a few keys in
    each of its trials' configs)."""
    if isinstance(cfg, DictConfig):
        return cfg
    top = key.split(".", 1)[0]
    # allow_objects: a plain run config may hold values OmegaConf does not type (numpy scalars drawn by
    # the tuner, paths); they pass through unchanged instead of failing the lookup.
    return OmegaConf.create({top: cfg[top]} if top in cfg else {}, flags={"allow_objects": True})


def get_dotted(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key, looked up with ``OmegaConf.select``.

    Args:
        cfg: a plain dict or a DictConfig.
        key: a dotted key such as ``generator.pred_iou_thresh``.

    Returns:
        The value (lists as plain lists; a missing value ``???`` as the string ``???``).

    Raises:
        TuningError: the key does not exist, or names a whole config group (not a value).
    """
    try:
        value = OmegaConf.select(_as_config(cfg, key), key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        return MISSING
    if value is _ABSENT:
        raise TuningError(f"config has no key {key!r} (a misspelt tuned or tune.space key?)")
    if isinstance(value, DictConfig):
        raise TuningError(f"config key {key!r} is a group of keys, not a value: name one of its keys")
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """Set an existing dotted key in place with ``OmegaConf.update``; no key is ever added.

    Args:
        cfg: a plain dict (changed in place) or a DictConfig.
        key: a dotted key that :func:`get_dotted` finds.
        value: its new value.

    Raises:
        TuningError: as :func:`get_dotted`.
    """
    get_dotted(cfg, key)
    node = _as_config(cfg, key)
    OmegaConf.update(node, key, value, merge=False)
    if node is not cfg:
        cfg.update(OmegaConf.to_container(node))  # the one top-level entry the key is in


def resolved_root(root: Any) -> str | None:
    """``root`` as an absolute path string, or None where it is unset (None, empty or ``???``)."""
    return str(Path(str(root)).expanduser().resolve()) if root not in (None, "", MISSING) else None


def check_disjoint(split_root: Any, split_ids: Iterable[str], eval_root: Any, eval_ids: Iterable[str]) -> None:
    """Refuse a tuning split that is (or overlaps) the evaluated images: same root, or shared ids.

    Args:
        split_root: the tuning split's root folder (None/empty/``???``: unknown, not compared).
        split_ids: the split's image ids.
        eval_root: the evaluated dataset's root folder.
        eval_ids: the evaluated dataset's image ids.

    Raises:
        TuningError: same folder, or ids in both (the first five named).
    """
    split, evaluated = resolved_root(split_root), resolved_root(eval_root)
    if split is not None and split == evaluated:
        raise TuningError(f"the tuning split and the evaluation dataset are the same folder ({split}): tune on "
                          "labelled images that are not evaluated (tune.split.root)")
    shared = sorted(set(map(str, split_ids)) & set(map(str, eval_ids)))
    if shared:
        raise TuningError(f"{len(shared)} image id(s) are both in the tuning split ({split}) and in the evaluation "
                          f"dataset ({evaluated}), e.g. {shared[:5]}: the split must be disjoint from the "
                          "evaluated images")


def read_tuned(path: str | Path) -> dict:
    """Load and check a ``tuned.yaml``.

    Args:
        path: the file salip-bench-tune wrote.

    Returns:
        Its content: ``params`` (dotted key → value), ``split``, ``score``.

    Raises:
        TuningError: unreadable, not YAML, or no ``params`` mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TuningError(f"tuned={path}: cannot read it ({err}); it is the tuned.yaml salip-bench-tune wrote") from err
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise TuningError(f"tuned={path}: no 'params' mapping in it (is it a tuned.yaml from salip-bench-tune?)")
    return data


def apply_tuned(cfg: dict) -> dict:
    """Merge the tuned parameters of ``cfg["tuned"]`` (a path) into a run config.

    Args:
        cfg: the run config as a plain dict (not changed).

    Returns:
        A copy with the params set and ``cfg["tuned"]`` replaced by what was applied (file, params,
        split, score) so that summary.json records it; ``cfg`` itself when no file is given or it
        was applied already.

    Raises:
        TuningError: a bad file, a param naming no config key, or a split that overlaps the
            evaluated dataset.
    """
    path = cfg.get("tuned")
    if not path or isinstance(path, Mapping):
        return cfg
    data = read_tuned(path)
    cfg = copy.deepcopy(cfg)
    for key, value in data["params"].items():
        set_dotted(cfg, key, value)
    split = data.get("split") or {}
    dataset = DATASETS.build(cfg["dataset"])
    check_disjoint(split.get("root"), split.get("ids") or [], cfg["dataset"].get("root"), dataset.ids)
    cfg["tuned"] = {"file": str(path), "params": data["params"], "score": data.get("score"),
                    "split": {k: v for k, v in split.items() if k != "ids"}}
    return cfg
