"""What a refused release spec says: the key, what is wrong, and what to write instead.

Pydantic's own messages ("Input should be a valid list") speak of Python
types; a release engineer reads TOML. Each refusal here names the key as it
is written in ``knightwatch.toml`` (``service.command``, ``flag[2].kind``) and
says, in TOML, what the key accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from knightwatch.errors import SpecError

__all__ = ["KeyedError", "describe", "key_of", "spec_error"]

SPEC_HINT = "see the release spec reference in README.md"
MAX_LISTED = 6


class KeyedError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def spec_error(exc: ValidationError, file: str) -> SpecError:
    """One SpecError for a refused spec: the first problem, and how many more (up to six)."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        context = error.get("ctx", {}).get("error")
        if isinstance(context, KeyedError):
            problems.append((context.key, context.message))
        elif error["loc"] and error["loc"][-1] in _SCALARS:  # one error per member of a union
            problem = (key_of(error["loc"][:-1]), _scalar_expected(error))
            if problem not in problems:
                problems.append(problem)
        else:
            key = key_of(error["loc"])
            problems.append((key, _COMMAND if _is_command(key, error) else describe(error)))
    key, message = problems[0]
    if len(problems) > 1:
        rest = "; ".join(f"{k}: {m}" for k, m in problems[1:MAX_LISTED])
        message += f" (and {len(problems) - 1} more: {rest})"
    return SpecError(message, file=file, key=key or "(top level)", hint=SPEC_HINT)


def key_of(loc: tuple[int | str, ...]) -> str:
    """The key a pydantic error location points at, as TOML writes it: ``flag[2].kind``."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part in ("function-after[", "tagged-union["):
            continue
        else:
            key += ("." if key else "") + str(part)
    return key


_WRITE_INSTEAD = {
    "list_type": 'should be a list, e.g. ["a", "b"]',
    "string_type": 'should be a string in quotes, e.g. "text"',
    "int_type": "should be a whole number, e.g. 8080",
    "int_from_float": "should be a whole number, e.g. 8080",
    "float_type": "should be a number, e.g. 5 or 2.5",
    "bool_type": "should be true or false (no quotes)",
    "dict_type": 'should be a table, e.g. [service.env] or { KEY = "value" }',
    "model_type": "should be a table ([name]) or, for a list, an array of tables ([[name]])",
    "model_attributes_type": "should be a table ([name]), not a single value",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key (remove it or check its spelling)",
}


def describe(error: Any) -> str:
    """What is wrong with one value, and what to write instead, in the spec's words."""
    kind = error["type"]
    if kind in _WRITE_INSTEAD:
        shown = _shown_input(error)
        return _WRITE_INSTEAD[kind] + (f", not {shown}" if shown else "")
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{error['input']!r} is not allowed: write one of {expected}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        return f"{error['input']!r} does not have the expected form {pattern}"
    return message


_SCALARS = ("bool", "int", "float", "str")
_COMMAND_KEYS = ("command", "hook")
_COMMAND = (
    'should be a command: a list, e.g. ["python3", "app/main.py"], '
    'or one string, e.g. "python3 app/main.py"'
)


def _is_command(key: str, error: Any) -> bool:
    """A command key (service.command, a check's command, halt.hook) got neither form."""
    return key.rsplit(".", 1)[-1] in _COMMAND_KEYS and error["type"] == "list_type"


def _scalar_expected(error: Any) -> str:
    """A value that may be any TOML scalar (a flag's default) got a list or a table."""
    shown = _shown_input(error)
    return "should be true or false, a number, or a string in quotes" + (
        f", not {shown}" if shown else ""
    )


def _shown_input(error: Any) -> str:
    """The refused value, short, for a type error (nothing for a missing or unknown key)."""
    if error["type"] in ("missing", "extra_forbidden") or "input" not in error:
        return ""
    value = error["input"]
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
