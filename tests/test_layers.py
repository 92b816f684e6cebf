"""The imports run one way: every module of nngraph, parsed with ``ast``, imports only its
own layer and those below it, graph/ imports nothing of nngraph but graph/ and the base
modules, and no modules import each other in a circle (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module belongs to the first layer one of whose prefixes it matches.
LAYERS = [
    ("base", ("nngraph.errors", "nngraph.io", "nngraph.schedule", "nngraph.device", "nngraph.plots",
              "nngraph.checkpoint", "nngraph.progress")),
    ("graph", ("nngraph.graph",)),
    ("draw", ("nngraph.draw",)),
    ("data", ("nngraph.data", "nngraph.examples", "nngraph.architectures")),
    ("pipeline", ("nngraph.pipeline",)),
    ("models", ("nngraph.models",)),
    ("tasks", ("nngraph.tasks",)),
    ("train", ("nngraph.train", "nngraph.training", "nngraph.memory", "nngraph.run")),
    ("cli", ("nngraph.cli", "nngraph.cli_runs", "nngraph.cli_options", "nngraph.demo", "nngraph")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "nngraph").rglob("*.py"))}


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "nngraph"):
            return rank
    assert module == "nngraph", f"{module} belongs to no layer; add it to LAYERS"
    return len(LAYERS) - 1


def imports_of(module: str) -> set[str]:
    """The nngraph modules ``module`` imports (``from pkg import sub`` counts as pkg.sub)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "nngraph"}
    return found - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer_and_the_test_reads_them_all():
    assert len(MODULES) > 40 and "nngraph.graph.layout" in MODULES
    assert all(layer_of(m) >= 0 for m in MODULES)
    assert "nngraph.graph.graph" in GRAPH["nngraph.graph.convert"]  # the parser sees real imports


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_lower_layer_to_a_higher_one(module):
    upward = sorted(m for m in GRAPH[module] if layer_of(m) > layer_of(module))
    assert not upward, f"{module} ({LAYERS[layer_of(module)][0]}) imports higher layers: {upward}"


def test_graph_imports_only_graph_and_the_base():
    allowed = ("nngraph.graph", "nngraph.errors", "nngraph.io")
    for module in (m for m in MODULES if m.startswith("nngraph.graph")):
        bad = sorted(m for m in GRAPH[module] if not any(m == a or m.startswith(a + ".") for a in allowed))
        assert not bad, f"{module} imports {bad}"


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [module, dep]))
            if dep in GRAPH and not state.get(dep):
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [])


def test_the_checker_catches_an_upward_import_and_a_circle():
    saved = dict(GRAPH)
    try:
        GRAPH["nngraph.graph.layout"] = GRAPH["nngraph.graph.layout"] | {"nngraph.models.registry"}
        with pytest.raises(AssertionError, match="higher layers"):
            test_no_import_from_a_lower_layer_to_a_higher_one("nngraph.graph.layout")
        GRAPH["nngraph.graph.graph"] = GRAPH["nngraph.graph.graph"] | {"nngraph.graph.layout"}
        with pytest.raises(AssertionError, match="import circle"):
            test_no_import_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_benchmarks_import_the_package_never_the_tests():
    """benchmarks/ is a client of nngraph (and of its own helpers): no import from tests/."""
    found = {}
    for path in sorted((SRC.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found.setdefault(path.name, set()).update(n for n in names if n.split(".")[0] == "tests")
    assert len(found) > 5  # the scan read the benchmarks
    assert not {k: v for k, v in found.items() if v}, f"benchmarks import from tests/: {found}"
