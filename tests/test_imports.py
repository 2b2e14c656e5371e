"""The package's import graph: no cycle (at module or function level), no private name of another module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaegan"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, str | None, int]]:
    """(imported vaegan module, imported name or None, line) of every import statement, wherever it is."""
    path = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("vaegan")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaegan"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in MODULES else (node.module, alias.name, node.lineno))
    return found


def edges(name: str) -> set[str]:
    """The modules that importing ``name`` runs: each imported module and its parent packages (but not
    ``name``'s own packages, which are always imported before it)."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    out = set()
    for target, _, _ in imports_of(name):
        parts = target.split(".")
        out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & MODULES.keys()
    return out - own


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = {name: edges(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_private_name_of_another(name):
    private = [f"{MODULES[name].name}:{line} imports {what} from {target}"
               for target, what, line in imports_of(name) if what and what.startswith("_") and target != name]
    assert not private, "; ".join(private)


def test_the_layout_is_by_concern():
    """Top-level modules are only the entry points and the package's shared pieces."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "run", "evaluate", "explore", "report", "dashboard", "compat", "module"}, sorted(top)
