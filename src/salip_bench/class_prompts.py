"""The organ's descriptive sentences: ``{class: [sentences]}`` JSON files, built-in or user-given.

A light module (no torch): the command line checks the prompts before any model is loaded.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from omegaconf import MISSING

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
