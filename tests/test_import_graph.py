"""No import cycle between the package's modules, inside one folder or across folders.

Every import counts: at module level, inside functions (a lazy import is still a dependency) and
under ``if TYPE_CHECKING:`` (a type-only cycle still ties two modules together). tests/test_layers.py
checks the direction between layers; this test checks modules, so it also sees a cycle that stays
inside one folder (``engines.clip`` → ``clip_engine`` → ``clip_cache`` → ``engines.clip`` was one).
A package's ``__init__`` importing its own modules is an edge like any other; importing ``a.b`` is
an edge to ``a.b`` only (Python runs ``a/__init__`` first, but that order is not a dependency of ours).
"""
from __future__ import annotations

import ast
from pathlib import Path

import salip_bench

PACKAGE = Path(salip_bench.__file__).parent


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports, for every ``.py`` under ``root`` (the package ``package``).

    Args:
        root: the package's folder.
        package: its import name.
    """
    paths = sorted(p for p in root.rglob("*.py") if "conf" not in p.relative_to(root).parts)
    modules = {module_name(p, root, package) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                for alias in node.names:  # ``from a import b``: the module a.b when there is one, else a
                    submodule = f"{node.module}.{alias.name}"
                    edges.add(submodule if submodule in modules else node.module)
        own = module_name(path, root, package)
        graph[own] = {e for e in edges if e in modules and e != own}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE, "salip_bench")
    assert "salip_bench.engines.builder" in graph and graph["salip_bench.engines.builder"]  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_inside_one_folder_through_type_only_and_lazy_imports_is_found(tmp_path: Path) -> None:
    """The test above would fail on a planted cycle: one via a TYPE_CHECKING import and a lazy
    in-function import between two modules of one sub-package, and one through a package __init__."""
    pkg = tmp_path / "planted"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from planted.sub.b import B\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from planted.sub import a\n    return a\n")
    (pkg / "c.py").write_text("import planted.sub.a\n")
    graph = import_graph(pkg, "planted")
    assert graph["planted.c"] == {"planted.sub.a"}
    assert find_cycle(graph) == ["planted.sub.a", "planted.sub.b", "planted.sub.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg, "planted")) is None
