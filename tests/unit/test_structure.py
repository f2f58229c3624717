"""The shape of the package: its public API and its one-way dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import knightwatch
import knightwatch.bundle

SRC = Path(knightwatch.__file__).resolve().parent
DOMAIN = ("bundle", "control")
ADAPTERS = ("api", "cli", "agent", "dashboard")


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
        public = {n for n in vars(module) if not n.startswith("_") and n[0].isupper()}
        assert public <= set(exported)
        for name in exported:
            assert hasattr(module, name), name


class TestLayering:
    @pytest.mark.parametrize("package", DOMAIN)
    def test_domain_never_imports_adapters(self, package: str) -> None:
        """The domain (bundle/, control/) imports no adapter and no web framework."""
        for path in (SRC / package).rglob("*.py"):
            for name in imported_modules(path):
                assert not name.startswith(tuple(f"knightwatch.{a}" for a in ADAPTERS)), path
                assert name.split(".")[0] not in ("fastapi", "starlette", "typer", "rich"), path

    def test_agent_never_imports_the_store(self) -> None:
        """The agent reports state; it never touches the store."""
        for path in (SRC / "agent").rglob("*.py"):
            for name in imported_modules(path):
                assert not name.startswith("knightwatch.store"), path
                assert name.split(".")[0] not in ("sqlalchemy", "alembic"), path

    def test_every_public_function_has_a_docstring(self) -> None:
        """Every public function and class in src/ says what it does."""
        missing = []
        for path in SRC.rglob("*.py"):
            for node in public_definitions(ast.parse(path.read_text())):
                if ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
        assert not missing
