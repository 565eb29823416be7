"""Label tables and organs by name: which label values make each target of a run.

A label table is {name: [values]}. It is read from an nnU-Net v2 ``labels`` entry ({name: value} or
{name: [values]} for regions), an MSD ``labels`` entry ({"value": name}), or a ``dataset.labels``
JSON file in either form. ``dataset.organs`` then picks targets from it: ``all`` (every named label
but the background), a list of names, or entries mapping a new target to several names
(``{kidney: [kidney_left, kidney_right]}`` merges them into one target).
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BACKGROUND_NAMES = {"background", "bg", "clear label"}


def label_table(entry: Mapping[str, Any], source: str = "labels") -> dict[str, list[int]]:
    """{name: [values]} from a ``labels`` mapping in the nnU-Net ({name: value}) or MSD ({"value": name}) form.

    Args:
        entry: the mapping as read from JSON.
        source: how errors name it (e.g. ``dataset.json labels``).

    Raises:
        ValueError: not a mapping of names and integer values.
    """
    if not isinstance(entry, Mapping) or not entry:
        raise ValueError(f"{source}: expected a non-empty mapping {{name: value}} or {{\"value\": name}}")
    table: dict[str, list[int]] = {}
    msd = all(_is_int(k) and isinstance(v, str) for k, v in entry.items())
    for key, value in entry.items():
        name, raw = (value, [key]) if msd else (key, value if isinstance(value, list) else [value])
        if not raw or not all(_is_int(v) for v in raw):
            raise ValueError(f"{source}: label {name!r} has value {value!r}; expected an integer or a list of them")
        table.setdefault(str(name), []).extend(int(v) for v in raw)
    return table


def read_label_table(path: str | Path, key: str = "dataset.labels", root: Path | None = None) -> dict[str, list[int]]:
    """A ``{value: name}`` (or {name: value}) JSON file → {name: [values]}; a whole ``dataset.json`` works too.
    A relative path that does not exist from the working directory is looked up in ``root`` (the dataset's)."""
    path = Path(path).expanduser()
    if root is not None and not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{key}={path}: file does not exist; expected a JSON label table {{value: name}}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{key}={path}: not a readable JSON file ({err})") from None
    if isinstance(data, Mapping) and isinstance(data.get("labels"), Mapping):
        data = data["labels"]
    return label_table(data, f"{key}={path}")


def names_by_value(table: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """{value: name} of a table's single-valued labels (regions' values are named by their parts)."""
    out: dict[int, str] = {}
    for name, values in table.items():
        for v in values:
            out.setdefault(int(v), name)
    return out


def resolve_organs(organs: Any, table: Mapping[str, Sequence[int]],
                   source: str = "the label table") -> dict[str, frozenset[int]]:
    """``dataset.organs`` → {target: label values}, in the order given.

    Args:
        organs: ``"all"``, a name, a list of names and/or one-entry mappings, or a mapping {target: [names]}.
        table: {name: [values]}.
        source: how the error names the table.

    Raises:
        ValueError: one line per unknown name, listing the closest names of the table.
    """
    named = {n: v for n, v in table.items() if n.casefold() not in BACKGROUND_NAMES and 0 not in v}
    if isinstance(organs, str) and organs == "all":
        return {name: frozenset(values) for name, values in named.items()}
    entries: list[tuple[str, list[str]]] = []
    items = [organs] if isinstance(organs, (str, Mapping)) else list(organs or ())
    for item in items:
        if isinstance(item, Mapping):
            entries.extend((str(k), [v] if isinstance(v, str) else [str(x) for x in v]) for k, v in item.items())
        else:
            entries.append((str(item), [str(item)]))
    if not entries:
        raise ValueError("dataset.organs is empty: name at least one organ, or 'all'")
    folded = {n.casefold(): n for n in named}
    targets: dict[str, frozenset[int]] = {}
    for target, parts in entries:
        values: set[int] = set()
        for part in parts:
            name = part if part in named else folded.get(part.casefold())
            if name is None:
                close = difflib.get_close_matches(part, list(named), n=5, cutoff=0.5)
                hint = f"closest: {', '.join(close)}" if close else f"names include: {', '.join(list(named)[:8])}"
                raise ValueError(f"dataset.organs: no organ {part!r} in {source} ({hint})")
            values.update(named[name])
        if target in targets:
            raise ValueError(f"dataset.organs: {target!r} is given twice")
        targets[target] = frozenset(values)
    return targets


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
