"""The shape of the package: its public API and its one-way dependencies."""

from __future__ import annotations
import __future__

import ast
import types
from pathlib import Path

import pytest

import knightwatch
import knightwatch.bundle
from tests.unit.package_map import ALLOWED, FORBIDDEN_LIBRARIES

SRC = Path(knightwatch.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def public_definitions(tree: ast.Module) -> list[Definition]:
    """Module-level functions and classes, and the methods of those classes, not private."""
    found: list[Definition] = []
    for node in tree.body:
        if isinstance(node, Definition) and not node.name.startswith("_"):
            found.append(node)
            if isinstance(node, ast.ClassDef):
                found.extend(
                    m for m in node.body if isinstance(m, Definition) and not m.name.startswith("_")
                )
    return found


class TestPublicApi:
    @pytest.mark.parametrize("module", [knightwatch, knightwatch.bundle])
    def test_all_is_sorted_and_complete(self, module: object) -> None:
        """``__all__`` is sorted and every public name defined in the package is in it."""
        exported = module.__all__  # type: ignore[attr-defined]
        assert exported == sorted(exported)
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and not isinstance(value, types.ModuleType)
            and not isinstance(value, __future__._Feature)
        }
        assert public <= set(exported)
        for name in exported:
            assert hasattr(module, name), name


def part_of(path: Path) -> str:
    """The part (subpackage or root module, see package_map) a source file belongs to."""
    first = path.relative_to(SRC).parts[0]
    return first.removesuffix(".py")


def module_name(path: Path) -> str:
    """The dotted module name of a source file."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imported_parts(path: Path) -> set[str]:
    """The other parts of knightwatch a file imports (at any depth, in functions too)."""
    parts = set()
    for name in imported_modules(path):
        pieces = name.split(".")
        if pieces[0] != "knightwatch":
            continue
        parts.add(pieces[1] if len(pieces) > 1 else "knightwatch")
    parts.discard(part_of(path))
    return parts


def module_edges(path: Path) -> set[str]:
    """The knightwatch modules a file imports: ``from pkg import mod`` counts as ``pkg.mod``."""
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            targets = [t for t in submodules if t in MODULES] or [node.module]
        for target in targets:
            known = target
            while known and known not in MODULES:
                known = known.rpartition(".")[0]
            if known and known != module_name(path):
                edges.add(known)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class TestLayering:
    def test_every_part_has_a_row_in_the_package_map(self) -> None:
        """A new package or root module must say what it may import."""
        parts = {part_of(path) for path in SRC.rglob("*.py")}
        assert parts - set(ALLOWED) == set()
        assert set(ALLOWED) - parts == set(), "the map names a part that does not exist"

    def test_every_import_is_allowed_by_the_package_map(self) -> None:
        """No part imports another its row does not allow, not even inside a function."""
        wrong = []
        for path in sorted(SRC.rglob("*.py")):
            part = part_of(path)
            for other in sorted(imported_parts(path) - ALLOWED[part]):
                wrong.append(f"{path.relative_to(SRC)} imports {other}")
        assert not wrong, "\n".join(wrong)

    def test_forbidden_libraries_stay_out(self) -> None:
        """The domain imports no web framework or CLI library; the agent no store."""
        wrong = []
        for path in sorted(SRC.rglob("*.py")):
            banned = FORBIDDEN_LIBRARIES.get(part_of(path), frozenset())
            for name in imported_modules(path):
                if name.split(".")[0] in banned:
                    wrong.append(f"{path.relative_to(SRC)} imports {name}")
        assert not wrong, "\n".join(wrong)

    def test_no_import_cycle_between_parts(self) -> None:
        """The package map itself has no cycle: the layers are a true order."""
        graph = {part: set(allowed) - {"knightwatch"} for part, allowed in ALLOWED.items()}
        assert cycles(graph) == []

    def test_no_import_cycle_between_modules(self) -> None:
        """No module imports (directly or through others) itself, imports in functions counted."""
        graph = {name: module_edges(path) for name, path in MODULES.items()}
        assert cycles(graph) == []

    def test_cycle_finder_finds_a_cycle(self) -> None:
        """The check above can fail: a two-module loop is found."""
        assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]

    def test_every_public_function_has_a_docstring(self) -> None:
        """Every public function and class in src/ says what it does."""
        missing = []
        for path in SRC.rglob("*.py"):
            for node in public_definitions(ast.parse(path.read_text())):
                if ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
        assert not missing
