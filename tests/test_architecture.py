"""The package's layers import only downward, and no modules import each other in a circle.

Every import statement of every module counts — at module level, inside functions and under
``TYPE_CHECKING`` — so a function-level import cannot hide an upward edge. The layer order is
declared here and in the README's layout section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "metasam"

# Bottom to top: a unit may import units of lower layers (and itself), nothing else.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version"),
    ("_checks", "stats"),
    ("_config", "_plotting", "_progress"),
    ("family",),
    ("optim", "models", "data"),
    ("sharpness",),
    ("training",),
    ("integrations",),
    ("tuning",),
    ("decision",),
    ("meta",),
    ("analysis",),
    ("workflow",),
    ("benchmark",),
    ("cli",),
    ("__main__", "__init__"),
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """Every metasam module ``path`` imports (resolved to a module where the name is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("metasam")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("metasam"):
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    out.append((full if full in modules else target, node.lineno))
    return out


def import_graph(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def upward_edges(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        for target, line in targets:
            a, b = unit_of(module), unit_of(target)
            if a == b:
                continue
            if a not in LEVEL or b not in LEVEL:
                bad.append(f"{module}:{line} -> {target} (a unit without a declared layer)")
            elif LEVEL[b] >= LEVEL[a]:
                bad.append(f"{module}:{line} -> {target} ({a} is not above {b})")
    return bad


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {m: {t for t, _ in ts if t in graph and t != m} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in import_graph()}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


def test_layers_import_only_downward():
    assert upward_edges(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_protocol_is_the_bottom_of_tuning():
    graph = import_graph()
    own = [t for t, _ in graph["metasam.tuning.trials"] if unit_of(t) == "tuning"]
    assert own == []


@pytest.mark.parametrize("source, problem", [
    # an upward import inside a function: found
    ({"optim/a.py": "def f():\n    from metasam.tuning import b\n", "tuning/b.py": ""},
     "upward"),
    # a cycle between two modules of one unit: found
    ({"family/a.py": "from metasam.family import b\n",
      "family/b.py": "def g():\n    from metasam.family.a import x\n"}, "cycle"),
])
def test_the_checks_find_what_they_look_for(tmp_path, source, problem):
    root = tmp_path / "metasam"
    for rel, text in source.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    (root / "__init__.py").touch()
    paths = sorted(root.rglob("*.py"))
    modules = {str(p.relative_to(tmp_path).with_suffix("")).replace("/", ".")
               .removesuffix(".__init__") for p in paths}
    graph = {}
    for p in paths:
        name = str(p.relative_to(tmp_path).with_suffix("")).replace("/", ".").removesuffix(
            ".__init__")
        graph[name] = _imports_under(p, tmp_path, modules)
    if problem == "upward":
        assert any("optim.a" in e and "tuning" in e for e in upward_edges(graph))
    else:
        assert cycles(graph) == [["metasam.family.a", "metasam.family.b"]]


def _imports_under(path: Path, top: Path, modules: set[str]) -> list[tuple[str, int]]:
    global ROOT
    saved, ROOT = ROOT, top / "metasam"
    try:
        return imports_of(path, modules)
    finally:
        ROOT = saved
