"""The organ's descriptive sentences: ``{class: [sentences]}`` JSON files, built-in or user-given.

A light module (no torch): the command line checks the prompts before any model is loaded.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from salip_bench.accepts import ConfigError, IntAtLeast

PROMPTS_PACKAGE = "salip_bench.prompts"


def builtin_prompt_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PROMPTS_PACKAGE).iterdir() if p.name.endswith(".json"))


def load_class_prompts(prompts: str | Path | None) -> dict[str, list[str]]:
    """Read a ``{class: [sentences]}`` JSON file, by built-in name (``lungs``) or path.

    Args:
        prompts: a built-in prompt-set name (no suffix) or the path of a JSON file.

    Raises:
        ValueError: one line naming ``dataset.prompts``, the value and what is expected.
    """
    expected = f"a built-in prompt set ({', '.join(builtin_prompt_names())}) or a JSON file {{class: [sentences]}}"
    if prompts in (None, "", MISSING):  # MISSING: the "???" of a required key left unset
        raise ValueError(f"dataset.prompts is required: {expected}")
    path = Path(str(prompts)).expanduser()
    if not path.suffix:
        candidate = resources.files(PROMPTS_PACKAGE) / f"{prompts}.json"
        if not candidate.is_file():
            raise ValueError(f"dataset.prompts={prompts}: unknown prompt set; expected {expected}")
        text = candidate.read_text()
    elif not path.is_file():
        raise ValueError(f"dataset.prompts={prompts}: file {path.resolve()} does not exist; expected {expected}")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"dataset.prompts={prompts}: cannot read it ({err}); expected {expected}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"dataset.prompts={prompts}: not valid JSON ({err}); expected {expected}") from err
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) and v and all(isinstance(s, str) and s.strip() for s in v) for v in data.values()):
        raise ValueError(f"dataset.prompts={prompts} must be a JSON object {{class: [non-empty sentences]}}, "
                         "with at least one class")
    return data


TOP_K = IntAtLeast(1)


def top_k_per_class(top_k: Any, classes: list[str], prompts: Any) -> dict[str, int]:
    """``dataset.top_k`` for every class of a prompt set: the one rule, for the command line's check and
    the run (:meth:`salip_bench.datasets.settings.DatasetSettings.top_k_per_class`).

    Args:
        top_k: one integer >= 1 for every class, or a mapping {class: integer >= 1}; extra classes are
            fine (one mapping may serve several prompt sets, conf/experiment/tab2.yaml).
        classes: the prompt set's classes.
        prompts: the prompt set, for the message.

    Returns:
        {class: k} for every class of ``classes``.

    Raises:
        ConfigError: one line naming ``dataset.top_k``, the value and what is expected.
    """
    expected = f"{TOP_K.expected} (candidates retrieved per class), or a mapping {{class: {TOP_K.expected}}}"
    if isinstance(top_k, Mapping):
        missing = sorted(set(classes) - set(top_k))
        if missing:
            raise ConfigError(f"dataset.top_k={dict(top_k)}: no k for class(es) {missing} of prompt set {prompts!r}; "
                              f"expected {expected}")
        for name in classes:
            TOP_K.check(f"dataset.top_k.{name}", top_k[name])
        return {name: int(top_k[name]) for name in classes}
    if not TOP_K.accepts(top_k):
        raise ConfigError(f"dataset.top_k={top_k!r}: expected {expected}")
    return {name: int(top_k) for name in classes}
