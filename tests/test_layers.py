"""The package's layers import only downwards: a module never imports one from a layer above it.

Layers, bottom to top (README "Layout"): core modules → storage → engines → stages → methods →
datasets → evaluation → reporting → entry points. A module may import its own layer and any below.
Imports inside functions count too: a lazy import upwards is still a dependency upwards.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import salip_bench

PACKAGE = Path(salip_bench.__file__).parent
LAYERS: dict[str, int] = {
    "__init__": 0, "types": 0, "registry": 0, "metrics": 0, "accepts": 0, "config_keys": 0, "class_prompts": 0,
    "masks": 0, "prompts": 0,
    "storage": 1,
    "engines": 2,
    "stages": 3, "qc": 3,
    "methods": 4,
    "datasets": 5,
    "evaluation": 6,
    "reporting": 7,
    "cli": 8, "tune": 8, "train": 8, "report": 8,
}


def layer_of(module: str) -> int:
    """The layer of ``salip_bench.<top>...`` by its first component; unknown tops fail the test."""
    top = module.split(".")[1] if "." in module else "__init__"
    if top not in LAYERS:
        raise AssertionError(f"salip_bench.{top} has no layer: add it to LAYERS and to README's layout")
    return LAYERS[top]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every ``salip_bench`` module that ``path`` imports, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("salip_bench")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("salip_bench"):
            if node.module == "salip_bench":  # from salip_bench import registry
                found += [(node.lineno, f"salip_bench.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write salip_bench.… in full")
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downwards(path: Path) -> None:
    rel = path.relative_to(PACKAGE).with_suffix("")
    own = "salip_bench." + ".".join(rel.parts)
    own_layer = layer_of(own)
    upward = [f"{rel}.py:{line} imports {mod} (layer {layer_of(mod)} > {own_layer})"
              for line, mod in imported_modules(path) if layer_of(mod) > own_layer]
    assert not upward, "\n".join(upward)


def test_every_top_level_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops - {"conf"} <= set(LAYERS), sorted(tops - set(LAYERS))


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from salip_bench.evaluation.harness import run\n")
    assert [m for _, m in imported_modules(bad)] == ["salip_bench.evaluation.harness"]
    assert layer_of("salip_bench.evaluation.harness") > layer_of("salip_bench.engines.sam_engine")
