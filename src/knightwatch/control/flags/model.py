"""What a flag is, independent of the store: names, types, values, scopes, meaning, lifetimes.

A flag's *meaning* is its kind, the type of its value and its description;
:func:`meaning_fingerprint` hashes them, and the registry refuses a release
that declares a known name with another fingerprint. The *safe default* is
the value the release declares: the value a service falls back to when it
cannot read its flags, and the side of a ``kill`` flag that is never blocked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from knightwatch.canonical import canonical_json, sha256_hex
from knightwatch.errors import InvalidInputError
from knightwatch.vocabulary import FlagKind, FlagType

__all__ = [
    "DEFAULT_LIFETIMES",
    "FLAG_NAME",
    "MAX_STRING_VALUE",
    "FlagScalar",
    "Scope",
    "check_flag_name",
    "decode_value",
    "encode_value",
    "meaning_fingerprint",
    "parse_lifetimes",
    "parse_value",
    "type_of",
    "validate_value",
]

FlagScalar = bool | int | float | str
FLAG_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,126}$")
MAX_STRING_VALUE = 4096
_MAX_INTEGER = 2**63 - 1

DEFAULT_LIFETIMES: Mapping[FlagKind, timedelta | None] = {
    FlagKind.RELEASE: timedelta(days=40),
    FlagKind.EXPERIMENT: timedelta(days=40),
    FlagKind.OPS: timedelta(days=7),
    FlagKind.KILL: None,  # permanent
}
"""How long a flag of each kind is expected to live before it is retired."""


def check_flag_name(name: str) -> str:
    """Return ``name`` if it is a valid flag name; InvalidInputError says why not."""
    if not isinstance(name, str) or not FLAG_NAME.fullmatch(name):
        shown = repr(name[:60]) + ("…" if len(name) > 60 else "")
        raise InvalidInputError(
            f"{shown} is not a flag name",
            hint="a flag name is 1-127 characters: a lowercase letter, "
            "then lowercase letters, digits, '_', '.' or '-'",
        )
    return name


def type_of(value: FlagScalar) -> FlagType:
    """The flag type of a declared default (``true`` is a boolean, not an integer)."""
    if isinstance(value, bool):
        return FlagType.BOOLEAN
    if isinstance(value, int):
        return FlagType.INTEGER
    if isinstance(value, float):
        return FlagType.FLOAT
    return FlagType.STRING


def validate_value(value: object, value_type: FlagType, *, where: str) -> FlagScalar:
    """Return ``value`` as a value of ``value_type``; InvalidInputError names what is wrong."""
    problem = _value_problem(value, value_type)
    if problem is not None:
        raise InvalidInputError(
            f"{where}: {problem}", hint=f"give a {value_type} value, e.g. {_example(value_type)}"
        )
    if value_type is FlagType.FLOAT and not isinstance(value, float):
        return float(value)  # type: ignore[arg-type]  # an int, checked above
    return value  # type: ignore[return-value]  # checked by _value_problem


def _value_problem(value: object, value_type: FlagType) -> str | None:
    ok = {
        FlagType.BOOLEAN: isinstance(value, bool),
        FlagType.INTEGER: isinstance(value, int) and not isinstance(value, bool),
        FlagType.FLOAT: isinstance(value, int | float) and not isinstance(value, bool),
        FlagType.STRING: isinstance(value, str),
    }[value_type]
    if not ok:
        return f"{json.dumps(value)[:60]} is not a {value_type}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INTEGER:
        return "the integer is out of range (64-bit)"
    if isinstance(value, float) and not math.isfinite(value):
        return "the number must be finite"
    if isinstance(value, str) and (len(value) > MAX_STRING_VALUE or "\x00" in value):
        return f"a string value holds at most {MAX_STRING_VALUE} characters and no NUL"
    return None


def _example(value_type: FlagType) -> str:
    return {"boolean": "true", "integer": "42", "float": "0.5", "string": "'eu-west'"}[value_type]


def parse_value(text: str, value_type: FlagType) -> FlagScalar:
    """Parse a value typed on the command line (``true``, ``42``, ``0.5``, ``text``)."""
    if value_type is FlagType.STRING:
        return validate_value(text, value_type, where="value")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return validate_value(value, value_type, where=f"value {text[:60]!r}")


def encode_value(value: FlagScalar) -> str:
    """A value as the JSON text the store keeps."""
    return json.dumps(value)


def decode_value(text: str) -> FlagScalar:
    """A stored value back from its JSON text."""
    value = json.loads(text)
    assert isinstance(value, bool | int | float | str), f"stored flag value {text!r}"
    return value


def meaning_fingerprint(kind: str, value_type: str, description: str) -> str:
    """SHA-256 over a flag's meaning: kind, value type and description."""
    return sha256_hex(
        canonical_json({"description": description, "kind": kind, "type": value_type})
    )


@dataclass(frozen=True)
class Scope:
    """Where a value applies: the whole fleet, a node group, or one node."""

    kind: str
    """``fleet``, ``group`` or ``node``."""
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``fleet``, ``group:NAME`` or ``node:NAME``; anything else is refused."""
        if text == "fleet":
            return cls("fleet")
        kind, _, name = text.partition(":")
        if kind in ("group", "node") and re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", name):
            return cls(kind, name)
        raise InvalidInputError(
            f"{text[:80]!r} is not a flag scope",
            hint="a scope is fleet, group:NAME or node:NAME",
        )

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"

    @property
    def rank(self) -> int:
        """Narrower scopes win: node over group over fleet."""
        return {"fleet": 0, "group": 1, "node": 2}[self.kind]


def parse_lifetimes(text: str) -> dict[FlagKind, timedelta | None]:
    """``release=40,ops=7`` (days; ``kill=never``) over :data:`DEFAULT_LIFETIMES`."""
    lifetimes = dict(DEFAULT_LIFETIMES)
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, days = item.partition("=")
        if kind not in FlagKind.__members__.values() or not (days == "never" or days.isdigit()):
            raise InvalidInputError(
                f"flag lifetime {item!r} is not KIND=DAYS",
                hint="e.g. release=40,experiment=40,ops=7,kill=never",
            )
        lifetimes[FlagKind(kind)] = None if days == "never" else timedelta(days=int(days))
    return lifetimes
