"""Labels that tell runs apart in the report: the method, plus the settings that differ between
runs of that method (shortest first), from each run's config (or, for old summaries, its overrides)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from salip_bench.config_keys import changes_predictions
from salip_bench.evaluation.schema import Summary


class LabelledRun(Protocol):
    """What labelling reads of a run (:class:`~salip_bench.reporting.runs.Run` has it): runs.py
    imports this module, so naming that class here would be an import cycle."""

    path: Path

    @property
    def method(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def roi(self) -> str: ...
    @property
    def settings(self) -> dict[str, str]: ...

# Keys that change predictions but do not tell methods apart: the dataset is the table's rows, and
# Hydra's own settings (in old summaries' overrides) run nothing.
ROW_KEYS = ("dataset", "hydra")
# Dataset keys that change predictions but neither the images nor the ground truth (the organ's prompt
# set, candidates retrieved per class): they tell runs apart like method settings (paper Tab. 2 compares
# prompt sets on one dataset), but only where they differ on one dataset, not between datasets.
DATASET_SETTINGS = ("dataset.prompts", "dataset.top_k")


def is_dataset_setting(key: str) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in DATASET_SETTINGS)


def run_settings(summary: Summary) -> dict[str, str]:
    """The flattened config (or, for summaries without one, the overrides) restricted to the keys
    that change predictions and are not the table's row.

    Args:
        summary: the run's summary.
    """
    if summary.config:
        flat = _flatten(summary.config)
    else:
        pairs = (o.lstrip("+~").split("=", 1) for o in summary.overrides if "=" in o)
        flat = {key: value for key, value in pairs}
    return {k: v for k, v in flat.items()
            if changes_predictions(k) and (k.split(".")[0] not in ROW_KEYS or is_dataset_setting(k))}


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def method_labels(runs: list[LabelledRun]) -> list[str]:
    """``summary.method``, plus the settings that differ between runs of that method.

    Shortest first: a stage whose plugin differs shows as ``retriever=box``; only if that leaves
    two runs of one dataset with one label do all differing keys appear, and then the run folder.

    Args:
        runs: the report's runs, in order.
    """
    labels = [""] * len(runs)
    for method in dict.fromkeys(run.method for run in runs):
        members = [i for i, run in enumerate(runs) if run.method == method]
        flats = [runs[i].settings for i in members]
        differing = sorted(k for k in set().union(*flats) if len({f.get(k) for f in flats}) > 1
                           and (not is_dataset_setting(k) or _differs_on_a_dataset(k, [runs[i] for i in members])))
        renamed = {k.rsplit(".", 1)[0] for k in differing if k.endswith(".name")}
        short = [k for k in differing if k.endswith(".name") or k.split(".")[0] not in renamed]
        for keys in (short, differing, None):
            candidates = [_label(method, f, keys) if keys is not None
                          else f"{_label(method, f, differing)} [{runs[i].path}]" for i, f in zip(members, flats)]
            rows = [(runs[i].roi, runs[i].dataset, label) for i, label in zip(members, candidates)]
            if len(set(rows)) == len(rows):
                break
        for i, label in zip(members, candidates):
            labels[i] = label
    return labels


def _differs_on_a_dataset(key: str, runs: list[LabelledRun]) -> bool:
    pairs = {(run.dataset, run.settings.get(key)) for run in runs}
    return len(pairs) > len({dataset for dataset, _ in pairs})


def _label(method: str, settings: dict[str, str], keys: list[str]) -> str:
    if not keys:
        return method
    shown = _short_keys(keys)
    # A run without model@refiner_model refines with its model's engine: the label names it.
    defaults = {"refiner_model.name": settings.get("model.name", "-")}
    parts = [f"{shown[k]}={settings.get(k, defaults.get(k, '-'))}" for k in keys]
    return f"{method} ({', '.join(parts)})"


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key by its shortest dotted suffix that no other key ends with (``retriever.name`` →
    ``retriever``, ``generator.points_per_side`` → ``points_per_side``): labels stay readable."""
    paths = {k: k.removesuffix(".name").split(".") for k in keys}
    shown = {}
    for key, parts in paths.items():
        for n in range(1, len(parts) + 1):
            suffix = parts[-n:]
            if not any(other[-n:] == suffix for k, other in paths.items() if k != key):
                break
        shown[key] = ".".join(suffix)
    return shown
