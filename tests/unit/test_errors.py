"""The exception tree drawn in errors.py is the real one: every class, its parent, its exit code."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import knightwatch
import knightwatch.errors
from knightwatch.errors import KnightwatchError

LINE = re.compile(r"^(?P<indent>[ │├└─]*?)(?P<name>[A-Z]\w+Error)\s+(?:exit (?P<code>\d))?")


def all_error_classes() -> dict[str, type[KnightwatchError]]:
    """Every KnightwatchError subclass defined anywhere in the package (all modules imported)."""
    for module in pkgutil.walk_packages(knightwatch.__path__, "knightwatch."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: dict[str, type[KnightwatchError]] = {"KnightwatchError": KnightwatchError}
    stack: list[type[KnightwatchError]] = [KnightwatchError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("knightwatch."):
                found[sub.__name__] = sub
                stack.append(sub)
    return found


def drawn_tree() -> dict[str, tuple[str | None, int | None]]:
    """Each class in the drawing: (its parent by indentation, the exit code it shows)."""
    doc = knightwatch.errors.__doc__ or ""
    drawn: dict[str, tuple[str | None, int | None]] = {}
    parents: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = LINE.match(line.strip("\n")[4:] if line.startswith("    ") else "")
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        parents = parents[:depth]
        parent = parents[-1][1] if parents else None
        code = int(match["code"]) if match["code"] else None
        drawn[match["name"]] = (parent, code)
        parents.append((depth, match["name"]))
    return drawn


def test_the_drawing_names_every_error_class() -> None:
    """No KnightwatchError subclass is missing from the drawing, and none is invented."""
    assert set(drawn_tree()) == set(all_error_classes())


def test_the_drawing_shows_each_class_under_its_parent() -> None:
    """Indentation in the drawing is inheritance in the code."""
    classes = all_error_classes()
    for name, (parent, _code) in drawn_tree().items():
        if parent is None:
            assert classes[name] is KnightwatchError
        else:
            assert classes[name].__bases__[0] is classes[parent], name


def test_the_drawn_exit_codes_are_the_real_ones() -> None:
    """Where the drawing shows an exit code, the class has it; its subclasses inherit it."""
    classes = all_error_classes()
    for name, (_parent, code) in drawn_tree().items():
        if code is not None:
            assert classes[name].exit_code == code, name


@pytest.mark.parametrize("name", sorted(all_error_classes()))
def test_every_error_is_documented_and_exits_1_or_2(name: str) -> None:
    """Each class says what it means (a docstring) and exits 1 (failed) or 2 (refused)."""
    error = all_error_classes()[name]
    assert error.__doc__ and error.__doc__.strip(), name
    assert error.exit_code in (1, 2), name


def test_an_error_carries_a_message_and_a_hint_for_the_user() -> None:
    """The message is the user's line; the hint says what to do next."""
    error = KnightwatchError("the fleet is on fire", hint="knightwatch kill --reason fire")
    assert str(error) == "the fleet is on fire"
    assert error.message == "the fleet is on fire"
    assert error.hint == "knightwatch kill --reason fire"
