"""The package's shape: one concept per module, each under 500 lines, no import circles, the benchmark outside the core.

A newcomer should find each concept in one small module, and a user who clones the project without this
repository's development set-up must not meet a path that only exists there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_fst"
MAX_LINES = 500
# Front ends may import the benchmark runner; the library itself never does.
FRONT_ENDS = ("hf_fst.benchmark", "hf_fst.scripts", "hf_fst.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every hf_fst module `path` imports, at the top or inside functions, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_fst"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hf_fst"))
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (a package importing its own submodules is not one), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):  # a submodule importing its parent package's __init__
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


def test_no_import_circles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None  # package <-> own submodule is allowed


def test_the_library_never_imports_the_benchmark():
    offenders = {
        name: sorted(m for m in targets if m.startswith("hf_fst.benchmark"))
        for name, targets in GRAPH.items()
        if not name.startswith(FRONT_ENDS)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_library_code_names_the_development_data_folder():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for needle in ('"shared"', "'shared'", "shared/data", "shared\\\\data"):
            assert needle not in text, f"{path.relative_to(PACKAGE.parent)} names {needle}"


def test_the_listed_mutations_still_match_the_source(monkeypatch):
    """`benchmarks/listed_mutations.py` must mutate code that exists: each original text once, each mutant different."""
    import importlib.util
    import sys

    script = PACKAGE.parent / "benchmarks" / "listed_mutations.py"
    spec = importlib.util.spec_from_file_location("listed_mutations", script)
    listed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "listed_mutations", listed)  # dataclasses look their module up there
    spec.loader.exec_module(listed)
    assert len(listed.MUTATIONS) == 13 and len({m.name for m in listed.MUTATIONS}) == 13
    for mutation in listed.MUTATIONS:
        source = (PACKAGE.parent / mutation.path).read_text()
        assert source.count(mutation.old) == 1 and mutation.new != mutation.old, mutation.name
        assert all((PACKAGE.parent / test).is_file() for test in mutation.tests), mutation.name
