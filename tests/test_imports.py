"""The package's import graph: no cycle among its modules, and the lower layers import nothing from the upper ones.

Every `import` / `from ... import` counts wherever it is written (module level or inside a function: a lazy import
that hides a cycle is still one), as does `importlib.import_module` with a literal name, or an f-string whose
literal prefix stands for every module directly under it (`f"uniformer.tasks.{name}"`: each task package).
Imports of a package's own parents (Python runs `a/__init__` before `a.b`) are not edges.
"""
from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import uniformer

PACKAGE = "uniformer"
PACKAGE_DIR = Path(uniformer.__file__).resolve().parent

# Imports allowed to close a cycle for now, each with the reason. Every one is code that the other half of issue 17
# (one road from a checkpoint to outputs) removes: delete the entry with the import (the test below fails on an
# entry whose import is gone, so that none outlives its reason).
ALLOWED_BACK_EDGES: dict[tuple[str, str], str] = {}  # (importer, imported) -> why a cycle must stay

# lower layer -> the packages it must not import (README "Layout")
FORBIDDEN = {
    "uniformer.engine": ("uniformer.tasks", "uniformer.cli", "uniformer.serve", "uniformer.commands"),
    "uniformer.data": ("uniformer.tasks", "uniformer.cli", "uniformer.serve", "uniformer.commands"),
    "uniformer.models": ("uniformer.engine", "uniformer.data", "uniformer.tasks", "uniformer.deploy", "uniformer.cli",
                         "uniformer.serve", "uniformer.commands"),
}


def package_modules(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package (dotted name -> file), found with pkgutil without importing any."""
    modules = {package: package_dir / "__init__.py"}

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            name = prefix + info.name
            if info.ispkg:
                modules[name] = path / info.name / "__init__.py"
                walk(path / info.name, name + ".")
            else:
                modules[name] = path / f"{info.name}.py"

    walk(package_dir, package + ".")
    return modules


def _dynamic_targets(call: ast.Call, modules: dict[str, Path]) -> list[str]:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not call.args:
        return []
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value] if arg.value in modules else []
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return [m for m in modules if m.startswith(prefix) and m != prefix and "." not in m[len(prefix):]]
    return []


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[tuple[str, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [(a.name, node.lineno) for a in node.names if a.name in modules]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:  # `from a import b`: the submodule a.b if there is one, else a itself
                    sub = f"{base}.{a.name}"
                    if sub in modules:
                        targets.append((sub, node.lineno))
                    elif base in modules:
                        targets.append((base, node.lineno))
            elif isinstance(node, ast.Call):
                targets += [(t, node.lineno) for t in _dynamic_targets(node, modules)]
        edges: dict[str, int] = {}
        for target, line in sorted(targets, key=lambda t: t[1]):
            if target != name:  # a module naming itself (an f-string prefix matching its own package) is no edge
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a, b, ..., a) through each strongly connected group of modules, shortest first found."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:
        start = min(group)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:  # breadth-first back to `start` inside the group
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w in group and w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(package_modules(PACKAGE_DIR, PACKAGE))


def test_the_walk_sees_the_package(graph):
    assert "uniformer.tasks.detection.detector" in graph and "uniformer.engine.runner" in graph
    assert "uniformer.models.variants" in graph["uniformer.models.checkpoint"]  # a relative import resolved


def test_no_import_cycle(graph):
    pruned = {m: {t: line for t, line in edges.items() if (m, t) not in ALLOWED_BACK_EDGES}
              for m, edges in graph.items()}
    cycles = find_cycles(pruned)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, pruned) for c in cycles)


def test_every_allowed_back_edge_is_still_there(graph):
    gone = [edge for edge in ALLOWED_BACK_EDGES if edge[1] not in graph.get(edge[0], {})]
    assert not gone, f"remove these from ALLOWED_BACK_EDGES, the imports are gone: {gone}"


def test_lower_layers_import_nothing_from_upper_ones(graph):
    wrong = [f"{m} (line {line}) imports {t}" for m, edges in graph.items() for t, line in edges.items()
             for lower, upper in FORBIDDEN.items()
             if (m == lower or m.startswith(lower + ".")) and any(t == u or t.startswith(u + ".") for u in upper)]
    assert not wrong, "\n".join(wrong)


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The checks above can fail: a lazy import inside a function and a dynamic import close cycles here."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import helper\n",
        "b.py": "def helper():\n    from . import a\n    return a\n",
        "sub/__init__.py": "import importlib\n\n\ndef load(name):\n"
                           "    return importlib.import_module(f'pkg.sub.{name}')\n",
        "sub/c.py": "from pkg import sub\n",
        "d.py": "from pkg.sub import c\n",
    }
    for path, text in files.items():
        (pkg / path).write_text(text)
    graph = import_graph(package_modules(pkg, "pkg"))
    cycles = sorted(find_cycles(graph))
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.sub", "pkg.sub.c", "pkg.sub"]]
    assert describe(cycles[0], graph) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.a"
    assert "pkg.sub.c" in graph["pkg.d"] and "pkg.sub" not in graph["pkg.d"]
